//! Tests of the spool on a real file system (temporary directories): commit,
//! recovery, group commit, the queue operations, and a throughput
//! measurement (ignored by default).

use std::collections::{BTreeSet, HashSet};
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::layout::{MESSAGE_FILE, SPARE_ENVELOPE};
use super::*;

const T0: u64 = 1_795_333_122;

fn sample_envelope(evpid: Evpid, rcpt: &str) -> Envelope {
    let mut e = Envelope::new(
        evpid,
        Target::Mda(MdaTarget {
            user: "joe".into(),
            ..MdaTarget::default()
        }),
        "sender@example.net",
        rcpt,
        rcpt,
        T0,
    );
    e.dispatcher = "local".into();
    e.listener = "lo".into();
    e.smtpname = "mx.example.org".into();
    e.helo = "client.example.net".into();
    e.hostname = "client.example.net".into();
    e.client = ClientAddr::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST));
    e
}

/// Commits one message with `n` envelopes and `body`, blocking.
fn commit_message(spool: &Spool, body: &[u8], n: usize) -> (Msgid, Vec<Envelope>) {
    let mut w = spool.begin_message_blocking().unwrap();
    w.write_blocking(body).unwrap();
    let envelopes: Vec<Envelope> = (0..n)
        .map(|i| sample_envelope(w.new_evpid().unwrap(), &format!("rcpt{i}@example.org")))
        .collect();
    let msgid = w.commit_blocking(envelopes.clone()).unwrap();
    (msgid, envelopes)
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn read_body(spool: &Spool, msgid: Msgid) -> Vec<u8> {
    let mut body = Vec::new();
    spool
        .open_message(msgid)
        .unwrap()
        .read_to_end(&mut body)
        .unwrap();
    body
}

/// Waits (bounded) until `cond` holds.
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn commit_then_reopen_finds_the_message() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("spool");
    let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let (msgid, envelopes) = {
        let (spool, recovery) = Spool::open(&root).unwrap();
        assert!(recovery.envelopes.is_empty());
        let (msgid, envelopes) = commit_message(&spool, &body, 2);
        // On disk in OpenSMTPD's layout, nothing left in incoming/.
        let dir = root
            .join("queue")
            .join(format!("{:02x}", msgid.bucket()))
            .join(msgid.to_string());
        let mut want = vec!["message".to_string()];
        want.extend(envelopes.iter().map(|e| e.id.to_string()));
        want.sort();
        assert_eq!(names(&dir), want);
        assert!(names(&root.join("incoming")).is_empty());
        assert_eq!(spool.messages().unwrap(), vec![msgid]);
        (msgid, envelopes)
    };

    let (spool, recovery) = Spool::open(&root).unwrap();
    assert_eq!(recovery.messages, 1);
    assert_eq!(recovery.rolled_back, 0);
    let mut want = envelopes.clone();
    want.sort_by_key(|e| e.id);
    assert_eq!(recovery.envelopes, want);
    assert_eq!(read_body(&spool, msgid), body);
    assert_eq!(spool.envelopes().unwrap(), want);
}

#[tokio::test]
async fn async_writer_streams_large_bodies() {
    let tmp = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(tmp.path()).unwrap();
    let mut w = spool.begin_message().await.unwrap();
    let mut body = Vec::new();
    for i in 0..800u32 {
        let line = format!("line {i} {}\r\n", "x".repeat((i % 977) as usize));
        w.write(line.as_bytes()).await.unwrap();
        body.extend_from_slice(line.as_bytes());
    }
    assert_eq!(w.size(), body.len() as u64);
    assert!(body.len() > 3 * 64 * 1024);
    let evp = sample_envelope(w.new_evpid().unwrap(), "a@example.org");
    let msgid = w.commit(vec![evp.clone()]).await.unwrap();
    assert_eq!(evp.id.msgid(), msgid);
    assert_eq!(read_body(&spool, msgid), body);
    assert_eq!(spool.load_envelope(evp.id).unwrap(), evp);
}

#[test]
fn files_left_in_incoming_are_rolled_back_at_open() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    {
        let (spool, _) = Spool::open(root).unwrap();
        let mut w = spool.begin_message_blocking().unwrap();
        w.write_blocking(b"Subject: half\r\n\r\nbody").unwrap();
        w.flush_blocking().unwrap();
        // A crash: the writer's cleanup never runs.
        w.crash();
        std::fs::write(root.join("incoming").join("stray"), b"x").unwrap();
        std::fs::write(root.join("purge").join("leftover"), b"x").unwrap();
        assert_eq!(names(&root.join("incoming")).len(), 2);
    }
    let (spool, recovery) = Spool::open(root).unwrap();
    assert_eq!(recovery.rolled_back, 2);
    assert!(recovery.envelopes.is_empty());
    assert!(names(&root.join("incoming")).is_empty());
    assert!(names(&root.join("purge")).is_empty());
    assert!(spool.messages().unwrap().is_empty());
}

#[tokio::test]
async fn dropping_or_aborting_a_writer_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(tmp.path()).unwrap();
    let mut w = spool.begin_message().await.unwrap();
    w.write(b"data").await.unwrap();
    // A small body stays in memory until something must be written.
    assert!(names(&tmp.path().join("incoming")).is_empty());
    w.flush().await.unwrap();
    assert_eq!(names(&tmp.path().join("incoming")).len(), 1);
    drop(w);
    assert!(names(&tmp.path().join("incoming")).is_empty());

    let mut w = spool.begin_message().await.unwrap();
    w.write(b"data").await.unwrap();
    w.flush().await.unwrap();
    w.abort().unwrap();
    assert!(names(&tmp.path().join("incoming")).is_empty());
    assert!(spool.messages().unwrap().is_empty());
}

#[test]
fn invalid_envelopes_fail_the_commit_and_roll_back() {
    let tmp = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(tmp.path()).unwrap();
    let foreign = Evpid::from_parts(Msgid::new(1).unwrap(), 1).unwrap();

    let mut w = spool.begin_message_blocking().unwrap();
    w.write_blocking(b"x").unwrap();
    let err = w
        .commit_blocking(vec![sample_envelope(foreign, "a@b")])
        .unwrap_err();
    assert!(err.to_string().contains("does not belong"), "{err}");

    let mut w = spool.begin_message_blocking().unwrap();
    let mut evil = sample_envelope(w.new_evpid().unwrap(), "a@b");
    evil.helo = "x\nrcpt: root@localhost".into();
    let err = w.commit_blocking(vec![evil]).unwrap_err();
    assert!(matches!(err, QueueError::InvalidEnvelope(_)), "{err}");

    let w = spool.begin_message_blocking().unwrap();
    assert!(w.commit_blocking(Vec::new()).is_err());

    let mut w = spool.begin_message_blocking().unwrap();
    let e = sample_envelope(w.new_evpid().unwrap(), "a@b");
    let err = w.commit_blocking(vec![e.clone(), e]).unwrap_err();
    assert!(err.to_string().contains("given twice"), "{err}");

    assert!(names(&tmp.path().join("incoming")).is_empty());
    assert!(spool.messages().unwrap().is_empty());
    assert_eq!(spool.commit_stats().commits, 0);
}

#[test]
fn concurrent_commits_are_all_durable_with_distinct_ids() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let tasks = 64;
    let committed = {
        let (spool, _) = Spool::open(&root).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .unwrap();
        let committed: Vec<(Msgid, Vec<Envelope>, Vec<u8>)> = rt.block_on(async {
            let mut handles = Vec::new();
            for i in 0..tasks {
                let spool = spool.clone();
                handles.push(tokio::spawn(async move {
                    let body = format!("Subject: message {i}\r\n\r\nbody {i}\r\n").into_bytes();
                    let mut w = spool.begin_message().await.unwrap();
                    w.write(&body).await.unwrap();
                    let envelopes = vec![
                        sample_envelope(w.new_evpid().unwrap(), "a@example.org"),
                        sample_envelope(w.new_evpid().unwrap(), "b@example.org"),
                    ];
                    let msgid = w.commit(envelopes.clone()).await.unwrap();
                    (msgid, envelopes, body)
                }));
            }
            let mut out = Vec::new();
            for h in handles {
                out.push(h.await.unwrap());
            }
            out
        });
        let stats = spool.commit_stats();
        assert_eq!(stats.commits, tasks as u64);
        assert_eq!(stats.file_syncs, 3 * tasks as u64);
        assert_eq!(stats.message_dir_syncs, tasks as u64);
        println!("64 concurrent commits: {stats:?}");
        committed
    };
    let ids: HashSet<Msgid> = committed.iter().map(|(m, _, _)| *m).collect();
    assert_eq!(ids.len(), tasks, "message ids must be distinct");

    let (spool, recovery) = Spool::open(&root).unwrap();
    assert_eq!(recovery.messages, tasks);
    assert_eq!(recovery.envelopes.len(), 2 * tasks);
    for (msgid, envelopes, body) in &committed {
        assert_eq!(&read_body(&spool, *msgid), body);
        for e in envelopes {
            assert_eq!(&spool.load_envelope(e.id).unwrap(), e);
        }
    }
}

/// Holds the committer, lets `n` commits pile up, releases them as one
/// batch; returns the stats and the message ids.
fn one_batch(
    spool: &Spool,
    n: usize,
    mut draw: impl FnMut(usize) -> Msgid,
) -> (CommitStats, Vec<Msgid>) {
    let before = spool.commit_stats();
    let submitted = spool.counters().submitted.load(Ordering::Relaxed);
    let gate = spool.committer().gate.lock().unwrap();
    let mut threads = Vec::new();
    for i in 0..n {
        let spool = spool.clone();
        let msgid = draw(i);
        threads.push(std::thread::spawn(move || {
            let mut w = spool.begin_message_with(|| Ok(msgid)).unwrap();
            w.write_blocking(b"Subject: batch\r\n\r\nbody\r\n").unwrap();
            let e = sample_envelope(w.new_evpid().unwrap(), "a@example.org");
            w.commit_blocking(vec![e]).unwrap()
        }));
    }
    wait_until("all commits to reach the committer", || {
        spool.counters().submitted.load(Ordering::Relaxed) >= submitted + n as u64
    });
    drop(gate);
    let ids: Vec<Msgid> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let after = spool.commit_stats();
    let delta = CommitStats {
        batches: after.batches - before.batches,
        commits: after.commits - before.commits,
        failed: after.failed - before.failed,
        file_syncs: after.file_syncs - before.file_syncs,
        message_dir_syncs: after.message_dir_syncs - before.message_dir_syncs,
        shared_dir_syncs: after.shared_dir_syncs - before.shared_dir_syncs,
        largest_batch: after.largest_batch,
        prepare_micros: after.prepare_micros - before.prepare_micros,
        batch_micros: after.batch_micros - before.batch_micros,
    };
    (delta, ids)
}

#[test]
fn group_commit_shares_directory_fsyncs() {
    let tmp = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(tmp.path()).unwrap();

    // 16 messages in one bucket: one fsync of incoming/, one of the
    // bucket, one of queue/ (the bucket is new) for the whole batch,
    // instead of 2 or 3 per message.
    let (stats, ids) = one_batch(&spool, 16, |i| Msgid::new(0x5a00_0100 + i as u32).unwrap());
    assert_eq!(stats.batches, 1);
    assert_eq!(stats.largest_batch, 16);
    assert_eq!(stats.commits, 16);
    assert_eq!(stats.shared_dir_syncs, 3);
    assert_eq!(stats.message_dir_syncs, 16);
    assert_eq!(stats.file_syncs, 32);
    assert_eq!(spool.messages().unwrap(), ids);

    // Same bucket again: it exists now, so queue/ is not fsynced.
    let (stats, _) = one_batch(&spool, 8, |i| Msgid::new(0x5a00_0200 + i as u32).unwrap());
    assert_eq!((stats.batches, stats.shared_dir_syncs), (1, 2));

    // Random ids (as in production): one fsync per distinct directory.
    let (stats, ids) = one_batch(&spool, 16, |_| Msgid::random().unwrap());
    let buckets: BTreeSet<u8> = ids.iter().map(|m| m.bucket()).collect();
    let new_buckets = buckets.iter().any(|b| *b != 0x5a);
    assert_eq!(stats.batches, 1);
    assert_eq!(
        stats.shared_dir_syncs,
        1 + buckets.len() as u64 + u64::from(new_buckets)
    );
    assert_eq!(spool.messages().unwrap().len(), 40);
}

#[test]
fn a_commit_cancelled_before_the_rename_is_rolled_back() {
    let tmp = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(tmp.path()).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // Hold the committer so the commit waits in its channel.
    let gate = spool.committer().gate.lock().unwrap();
    let task = {
        let spool = spool.clone();
        rt.spawn(async move {
            let mut w = spool.begin_message().await.unwrap();
            w.write(b"x").await.unwrap();
            let e = sample_envelope(w.new_evpid().unwrap(), "a@b");
            w.commit(vec![e]).await
        })
    };
    wait_until("the commit to reach the committer", || {
        spool.counters().submitted.load(Ordering::Relaxed) == 1
    });
    // The session goes away (client disconnected, task cancelled).
    task.abort();
    assert!(rt.block_on(task).unwrap_err().is_cancelled());
    drop(gate);
    wait_until("the committer to roll back", || {
        spool.commit_stats().failed == 1
    });
    assert_eq!(spool.commit_stats().commits, 0);
    assert!(spool.messages().unwrap().is_empty());
    assert!(names(&tmp.path().join("incoming")).is_empty());
}

#[test]
fn update_envelope_rewrites_atomically() {
    let tmp = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(tmp.path()).unwrap();
    let (msgid, envelopes) = commit_message(&spool, b"body", 1);
    let mut e = spool.load_envelope(envelopes[0].id).unwrap();
    e.record_temporary_failure(
        T0 + 10,
        "Error (temporary failure: \"temp failure\")",
        Some(StatusCode { class: 4, code: 0 }),
    );
    spool.update_envelope(&e).unwrap();
    assert_eq!(spool.load_envelope(e.id).unwrap(), e);
    let dir = spool.layout().message_dir(msgid);
    assert!(!names(&dir).iter().any(|n| n.ends_with(".tmp")));

    // An update that cannot be written leaves the old envelope in place.
    let mut bad = e.clone();
    bad.errorline = "a\nb".into();
    assert!(spool.update_envelope(&bad).is_err());
    assert_eq!(spool.load_envelope(e.id).unwrap(), e);

    let missing = Evpid::from_parts(msgid, 7).unwrap();
    let mut ghost = e.clone();
    ghost.id = missing;
    assert!(matches!(
        spool.update_envelope(&ghost),
        Err(QueueError::NoSuchEnvelope(_))
    ));
}

#[test]
fn removing_the_last_envelope_removes_the_message() {
    let tmp = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(tmp.path()).unwrap();
    let (msgid, envelopes) = commit_message(&spool, b"body", 2);
    assert_eq!(
        spool.remove_envelope(envelopes[0].id).unwrap(),
        Removed::Envelope
    );
    assert_eq!(spool.envelope_ids(msgid).unwrap(), vec![envelopes[1].id]);
    assert!(matches!(
        spool.remove_envelope(envelopes[0].id),
        Err(QueueError::NoSuchEnvelope(_))
    ));
    assert_eq!(
        spool.remove_envelope(envelopes[1].id).unwrap(),
        Removed::Message
    );
    assert!(spool.messages().unwrap().is_empty());
    assert!(!spool.layout().message_dir(msgid).exists());
    assert!(names(&tmp.path().join("purge")).is_empty());
    assert!(matches!(
        spool.open_message(msgid),
        Err(QueueError::NoSuchMessage(_))
    ));

    let (msgid, _) = commit_message(&spool, b"body", 3);
    assert_eq!(spool.remove_message(msgid).unwrap(), 3);
    assert!(spool.messages().unwrap().is_empty());
    assert!(spool.remove_message(msgid).unwrap_err().is_not_found());
}

#[test]
fn removed_message_directories_are_reused_without_their_body() {
    use std::os::unix::fs::MetadataExt;
    let tmp = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(tmp.path()).unwrap();
    let (first, envelopes) = commit_message(&spool, b"first body", 1);
    let envelope_inode = std::fs::metadata(spool.layout().envelope_file(envelopes[0].id))
        .unwrap()
        .ino();
    spool.remove_envelope(envelopes[0].id).unwrap();
    // Kept in spare/: the emptied envelope file, no body.
    let spare = tmp.path().join("spare");
    assert_eq!(names(&spare).len(), 1);
    let kept = spare.join(&names(&spare)[0]);
    assert_eq!(names(&kept), vec![SPARE_ENVELOPE.to_string()]);
    assert_eq!(
        std::fs::metadata(kept.join(SPARE_ENVELOPE)).unwrap().len(),
        0
    );

    // The next message takes it: same envelope inode, its own body and envelope.
    let (second, envelopes) = commit_message(&spool, b"second body", 2);
    assert!(names(&spare).is_empty());
    assert_ne!(first, second);
    let inodes: Vec<u64> = envelopes
        .iter()
        .map(|e| {
            std::fs::metadata(spool.layout().envelope_file(e.id))
                .unwrap()
                .ino()
        })
        .collect();
    assert!(
        inodes.contains(&envelope_inode),
        "{inodes:?} {envelope_inode}"
    );
    assert_eq!(read_body(&spool, second), b"second body");
    let mut listed = names(&spool.layout().message_dir(second));
    listed.retain(|n| n != MESSAGE_FILE);
    assert_eq!(listed.len(), 2, "{listed:?}");
    for e in &envelopes {
        assert_eq!(spool.load_envelope(e.id).unwrap().rcpt, e.rcpt);
    }

    // A restart finds the message and an empty pool.
    spool.remove_envelope(envelopes[0].id).unwrap();
    spool.remove_envelope(envelopes[1].id).unwrap();
    let (_, envelopes) = commit_message(&spool, b"third", 1);
    let (third_spare, _) = commit_message(&spool, b"fourth", 1);
    spool.remove_message(third_spare).unwrap();
    assert_eq!(names(&spare).len(), 1);
    drop(spool);
    let (spool, recovered) = Spool::open(tmp.path()).unwrap();
    assert!(names(&spare).is_empty());
    assert!(
        recovered.quarantined.is_empty(),
        "{:?}",
        recovered.quarantined
    );
    assert_eq!(recovered.envelopes.len(), 1);
    assert_eq!(recovered.envelopes[0].id, envelopes[0].id);
    assert_eq!(spool.messages().unwrap().len(), 1);
}

#[test]
fn a_bounce_envelope_joins_its_message() {
    let tmp = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(tmp.path()).unwrap();
    let (msgid, envelopes) = commit_message(&spool, b"body", 1);
    let failed = &envelopes[0];
    let bounce = failed
        .bounce(
            spool.new_evpid(msgid).unwrap(),
            BounceTarget {
                kind: BounceKind::Failed,
                delay: 0,
                ttl: 0,
            },
            T0 + 60,
        )
        .unwrap();
    // Add the bounce first, then remove the failed envelope: the message
    // must survive for the bounce to quote it.
    spool.add_envelope(&bounce).unwrap();
    assert!(spool.add_envelope(&bounce).is_err(), "added twice");
    assert_eq!(spool.remove_envelope(failed.id).unwrap(), Removed::Envelope);
    assert_eq!(spool.load_envelope(bounce.id).unwrap(), bounce);
    assert_eq!(read_body(&spool, msgid), b"body");

    let stranger = Evpid::from_parts(Msgid::new(0x0102_0304).unwrap(), 1).unwrap();
    let mut orphan = bounce.clone();
    orphan.id = stranger;
    assert!(matches!(
        spool.add_envelope(&orphan),
        Err(QueueError::NoSuchMessage(_))
    ));
}

#[test]
fn recovery_quarantines_corrupt_files_and_purges_empty_messages() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let layout = Layout::new(root);
    let (good, damaged, emptied, bodiless);
    {
        let (spool, _) = Spool::open(root).unwrap();
        let (a, envs_a) = commit_message(&spool, b"a", 2);
        good = envs_a[0].clone();
        damaged = envs_a[1].id;
        std::fs::write(
            layout.envelope_file(damaged),
            b"version: 3\ntype: mta\nsender",
        )
        .unwrap();
        // An interrupted update of the good envelope.
        std::fs::write(layout.envelope_update_file(good.id), b"version: 3\nty").unwrap();
        // A crash between unlinking the last envelope and the message.
        let (b, envs_b) = commit_message(&spool, b"b", 1);
        std::fs::remove_file(layout.envelope_file(envs_b[0].id)).unwrap();
        emptied = b;
        // A message that lost its body.
        let (c, _) = commit_message(&spool, b"c", 1);
        std::fs::remove_file(layout.message_file(c)).unwrap();
        bodiless = c;
        // Names that are not ours.
        std::fs::write(layout.queue().join("README"), b"x").unwrap();
        std::fs::write(layout.message_dir(a).join("core"), b"x").unwrap();
        assert_eq!(a, good.id.msgid());
    }
    let (spool, recovery) = Spool::open(root).unwrap();
    assert_eq!(recovery.envelopes, vec![good.clone()]);
    assert_eq!(recovery.messages, 1);
    assert_eq!(recovery.purged, vec![emptied]);
    let quarantined: BTreeSet<String> = recovery
        .quarantined
        .iter()
        .map(|p| p.strip_prefix(root).unwrap().display().to_string())
        .collect();
    let a = good.id.msgid();
    let want: BTreeSet<String> = [
        format!("corrupt/{a}/{damaged}"),
        format!("corrupt/{a}/core"),
        format!("corrupt/{bodiless}"),
        "corrupt/README".to_string(),
    ]
    .into_iter()
    .collect();
    assert_eq!(quarantined, want);
    assert!(!layout.envelope_update_file(good.id).exists());
    assert_eq!(spool.messages().unwrap(), vec![a]);
    // Quarantined files are kept for a human, not deleted.
    assert_eq!(
        std::fs::read(root.join(format!("corrupt/{a}/{damaged}"))).unwrap(),
        b"version: 3\ntype: mta\nsender"
    );
}

#[test]
fn a_corrupt_envelope_found_at_runtime_is_quarantined() {
    let tmp = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(tmp.path()).unwrap();
    let (msgid, envelopes) = commit_message(&spool, b"body", 2);
    let bad = envelopes[0].id;
    std::fs::write(spool.layout().envelope_file(bad), b"garbage\n").unwrap();
    let err = spool.load_envelope(bad).unwrap_err();
    assert!(matches!(err, QueueError::Corrupt { .. }), "{err}");
    assert!(tmp.path().join(format!("corrupt/{msgid}/{bad}")).is_file());
    assert_eq!(spool.envelope_ids(msgid).unwrap(), vec![envelopes[1].id]);
    assert_eq!(spool.envelopes().unwrap(), vec![envelopes[1].clone()]);
    assert!(matches!(
        spool.load_envelope(bad),
        Err(QueueError::NoSuchEnvelope(_))
    ));
}

#[test]
fn the_queue_can_be_listed_while_the_daemon_is_down() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = {
        let (spool, _) = Spool::open(tmp.path()).unwrap();
        let (_, a) = commit_message(&spool, b"a", 2);
        let (_, b) = commit_message(&spool, b"b", 1);
        std::fs::write(spool.layout().envelope_file(b[0].id), b"garbage\n").unwrap();
        // Listing works even while another process holds the lock.
        let (listed, unreadable) = Spool::offline_envelopes(tmp.path()).unwrap();
        assert_eq!(listed.len(), 2);
        assert_eq!(unreadable.len(), 1, "{unreadable:?}");
        (a, b)
    };
    let mut want = a.clone();
    want.sort_by_key(|e| e.id);
    assert_eq!(Spool::offline_envelopes(tmp.path()).unwrap().0, want);
    // Nothing was repaired or moved.
    assert!(
        tmp.path()
            .join("corrupt")
            .read_dir()
            .unwrap()
            .next()
            .is_none()
    );
    let layout = Layout::new(tmp.path());
    assert!(layout.envelope_file(b[0].id).is_file());
}

#[test]
fn a_spool_is_opened_by_one_daemon_at_a_time() {
    let tmp = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(tmp.path()).unwrap();
    let err = Spool::open(tmp.path()).unwrap_err();
    assert!(matches!(err, QueueError::Locked(_)), "{err}");
    assert!(err.to_string().contains("in use by another smtpd"));
    drop(spool);
    assert!(Spool::open(tmp.path()).is_ok());
}

#[test]
fn message_ids_avoid_queued_and_open_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(tmp.path()).unwrap();
    let taken = Msgid::new(0x1111_1111).unwrap();
    let (first, _) = {
        let mut w = spool.begin_message_with(|| Ok(taken)).unwrap();
        let e = sample_envelope(w.new_evpid().unwrap(), "a@b");
        (w.commit_blocking(vec![e]).unwrap(), ())
    };
    assert_eq!(first, taken);
    // The id is queued: it is drawn again until a free one comes.
    let free = Msgid::new(0x2222_2222).unwrap();
    let mut draws = [taken, taken, free].into_iter();
    let w = spool
        .begin_message_with(|| Ok(draws.next().unwrap_or(free)))
        .unwrap();
    assert_eq!(w.msgid(), free);
    // Open in incoming/: also taken.
    let other = Msgid::new(0x3333_3333).unwrap();
    let mut draws = [free, other].into_iter();
    let w2 = spool
        .begin_message_with(|| Ok(draws.next().unwrap_or(other)))
        .unwrap();
    assert_eq!(w2.msgid(), other);
    // Only ever-taken ids: a bounded failure, not a hang.
    assert!(spool.begin_message_with(|| Ok(taken)).is_err());
}

/// Measures commits per second on the disk of `SMTPD_BENCH_DIR` (default: a
/// temporary directory under /var/tmp, which is on the same file system as
/// /var/spool here). Run with
/// `cargo test --lib queue::spool_tests::commit_rate -- --ignored --nocapture`.
#[test]
#[ignore = "measurement; prints commits/s"]
fn commit_rate() {
    let base = std::env::var_os("SMTPD_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from("/var/tmp"));
    let per_run: usize = std::env::var("SMTPD_BENCH_COMMITS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let body: Vec<u8> = b"Subject: bench\r\n\r\n"
        .iter()
        .copied()
        .chain(std::iter::repeat_n(b'x', 2048))
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for concurrency in [1usize, 16] {
        let tmp = tempfile::tempdir_in(&base).unwrap();
        let (spool, _) = Spool::open(tmp.path()).unwrap();
        let start = Instant::now();
        let latencies: Vec<Duration> = rt.block_on(async {
            let mut handles = Vec::new();
            for worker in 0..concurrency {
                let spool = spool.clone();
                let body = body.clone();
                let n = per_run / concurrency + usize::from(worker < per_run % concurrency);
                handles.push(tokio::spawn(async move {
                    let mut lat = Vec::with_capacity(n);
                    for _ in 0..n {
                        let t = Instant::now();
                        let mut w = spool.begin_message().await.unwrap();
                        w.write(&body).await.unwrap();
                        let e = sample_envelope(w.new_evpid().unwrap(), "a@example.org");
                        w.commit(vec![e]).await.unwrap();
                        lat.push(t.elapsed());
                    }
                    lat
                }));
            }
            let mut all = Vec::new();
            for h in handles {
                all.extend(h.await.unwrap());
            }
            all
        });
        let elapsed = start.elapsed();
        let mut lat = latencies;
        lat.sort();
        let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
        let stats = spool.commit_stats();
        println!(
            "commit 2 KB + 1 envelope, {concurrency:>2} concurrent: {:>6.0} commits/s  \
             p50 {:.2} ms  p99 {:.2} ms  batches {} (avg {:.1}, max {})  \
             shared dir fsyncs/commit {:.2}  prepare {:.2} ms/commit  committer {:.2} ms/batch",
            lat.len() as f64 / elapsed.as_secs_f64(),
            pct(0.50).as_secs_f64() * 1000.0,
            pct(0.99).as_secs_f64() * 1000.0,
            stats.batches,
            stats.commits as f64 / stats.batches.max(1) as f64,
            stats.largest_batch,
            stats.shared_dir_syncs as f64 / stats.commits.max(1) as f64,
            stats.prepare_micros as f64 / 1000.0 / stats.commits.max(1) as f64,
            stats.batch_micros as f64 / 1000.0 / stats.batches.max(1) as f64,
        );
        assert_eq!(stats.commits as usize, per_run);
    }
}

#[test]
fn a_small_body_delivered_before_the_commit_never_touches_the_spool() {
    let tmp = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(tmp.path()).unwrap();
    let chosen = Msgid::new(0x4444_4444).unwrap();
    let mut w = spool.begin_message_with(|| Ok(chosen)).unwrap();
    w.write_blocking(b"Subject: small\r\n\r\nbody\r\n").unwrap();
    // The id is reserved while the transaction is open, with nothing on disk.
    let other = Msgid::new(0x5555_5555).unwrap();
    let mut draws = [chosen, other].into_iter();
    let w2 = spool
        .begin_message_with(|| Ok(draws.next().unwrap_or(other)))
        .unwrap();
    assert_eq!(w2.msgid(), other);
    let mut body = String::new();
    w.body_file_blocking()
        .unwrap()
        .read_to_string(&mut body)
        .unwrap();
    assert_eq!(body, "Subject: small\r\n\r\nbody\r\n");
    w.discard_blocking();
    for dir in ["incoming", "queue", "spare"] {
        assert!(names(&tmp.path().join(dir)).is_empty(), "{dir}");
    }
    // Discarded: the id is free again.
    assert_eq!(
        spool.begin_message_with(|| Ok(chosen)).unwrap().msgid(),
        chosen
    );
}

#[test]
fn a_body_kept_in_memory_is_written_at_the_commit() {
    let tmp = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(tmp.path()).unwrap();
    let mut w = spool.begin_message_blocking().unwrap();
    w.write_blocking(b"Subject: later\r\n\r\nx\r\n").unwrap();
    // A delivery attempt read it from memory, then the message is queued after all.
    let _ = w.body_file_blocking().unwrap();
    assert!(names(&tmp.path().join("incoming")).is_empty());
    let e = sample_envelope(w.new_evpid().unwrap(), "a@b");
    let msgid = w.commit_blocking(vec![e]).unwrap();
    let body = String::from_utf8(read_body(&spool, msgid)).unwrap();
    assert_eq!(body, "Subject: later\r\n\r\nx\r\n");
    assert!(names(&tmp.path().join("incoming")).is_empty());
}

#[test]
fn a_large_body_goes_to_disk_and_its_directory_is_kept_emptied() {
    let tmp = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(tmp.path()).unwrap();
    let mut w = spool.begin_message_blocking().unwrap();
    let line = b"0123456789abcdef0123456789abcdef0123456789abcdef012345678901234\r\n";
    for _ in 0..20_000 {
        w.write_blocking(line).unwrap();
    }
    // 1.3 MB, more than a body kept in memory: past 1 MiB, incoming/<msgid>/ was created
    // with the blocks kept so far, and the memory went back.
    assert_eq!(names(&tmp.path().join("incoming")).len(), 1);
    assert_eq!(spool.memory_held(), 0);
    let mut body = Vec::new();
    w.body_file_blocking()
        .unwrap()
        .read_to_end(&mut body)
        .unwrap();
    assert_eq!(body.len(), line.len() * 20_000);
    assert!(body.chunks(line.len()).all(|l| l == line));
    w.discard_blocking();
    assert!(names(&tmp.path().join("incoming")).is_empty());
    let spares = names(&tmp.path().join("spare"));
    assert_eq!(spares.len(), 1);
    let kept = tmp.path().join("spare").join(&spares[0]).join(MESSAGE_FILE);
    assert_eq!(std::fs::metadata(kept).unwrap().len(), 0);
    // The next large message reuses it, and holds only its own bytes.
    let mut w = spool.begin_message_blocking().unwrap();
    for _ in 0..17_000 {
        w.write_blocking(line).unwrap();
    }
    let e = sample_envelope(w.new_evpid().unwrap(), "a@b");
    let msgid = w.commit_blocking(vec![e]).unwrap();
    assert!(names(&tmp.path().join("spare")).is_empty());
    let body = read_body(&spool, msgid);
    assert_eq!(body.len(), line.len() * 17_000);
}

/// Writes `body` to `w` in pieces of `piece` bytes, as a session would.
fn write_in_pieces(w: &mut MessageWriter, body: &[u8], piece: usize) {
    for chunk in body.chunks(piece) {
        w.write_blocking(chunk).unwrap();
    }
}

/// A body between 64 KiB and 1 MiB stays in a memory file: delivered before the commit it
/// never touches the spool; committed, it is written out whole.
#[test]
fn a_medium_body_stays_in_memory_until_the_commit() {
    let tmp = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(tmp.path()).unwrap();
    let line = b"0123456789abcdef0123456789abcdef0123456789abcdef012345678901234\r\n";
    let expected: Vec<u8> = (0..2_000u32)
        .flat_map(|i| {
            let mut l = line.to_vec();
            l[..4].copy_from_slice(format!("{i:04}").as_bytes());
            l
        })
        .collect();
    // Delivered, then discarded: nothing on disk, the memory given back.
    let mut w = spool.begin_message_blocking().unwrap();
    write_in_pieces(&mut w, &expected, line.len());
    assert!(names(&tmp.path().join("incoming")).is_empty());
    assert!(spool.memory_held() >= 64 * 1024, "{}", spool.memory_held());
    let mut readers = w.body_files_blocking(2).unwrap();
    for r in &mut readers {
        let mut body = Vec::new();
        r.read_to_end(&mut body).unwrap();
        assert!(body == expected, "{} bytes", body.len());
    }
    w.discard_blocking();
    assert_eq!(spool.memory_held(), 0);
    for dir in ["incoming", "queue", "spare"] {
        assert!(names(&tmp.path().join(dir)).is_empty(), "{dir}");
    }
    // A delivery attempt, then the commit after all: the file holds the whole body once.
    let mut w = spool.begin_message_blocking().unwrap();
    write_in_pieces(&mut w, &expected, line.len());
    let _ = w.body_file_blocking().unwrap();
    let e = sample_envelope(w.new_evpid().unwrap(), "a@b");
    let msgid = w.commit_blocking(vec![e]).unwrap();
    assert_eq!(spool.memory_held(), 0);
    let body = read_body(&spool, msgid);
    assert!(body == expected, "{} bytes", body.len());
    // Committed without a delivery attempt, and one dropped midway: the same.
    let mut w = spool.begin_message_blocking().unwrap();
    write_in_pieces(&mut w, &expected, line.len());
    let e = sample_envelope(w.new_evpid().unwrap(), "a@b");
    let msgid = w.commit_blocking(vec![e]).unwrap();
    let body = read_body(&spool, msgid);
    assert!(body == expected, "{} bytes", body.len());
    let mut w = spool.begin_message_blocking().unwrap();
    w.write_blocking(&expected).unwrap();
    assert!(spool.memory_held() > 0);
    drop(w);
    assert_eq!(spool.memory_held(), 0);
    assert!(names(&tmp.path().join("incoming")).is_empty());
}

/// Past the spool's memory budget, a body goes to the disk as before, and loses nothing.
#[test]
fn bodies_past_the_memory_budget_go_to_the_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(tmp.path()).unwrap();
    spool.set_memory_budget(200 * 1024);
    let block = vec![b'x'; 70 * 1024];
    let mut first = spool.begin_message_blocking().unwrap();
    first.write_blocking(&block).unwrap();
    first.write_blocking(&block).unwrap();
    assert_eq!(spool.memory_held(), 140 * 1024);
    assert!(names(&tmp.path().join("incoming")).is_empty());
    // The second body does not fit beside the first: it is spooled.
    let mut second = spool.begin_message_blocking().unwrap();
    second.write_blocking(&block).unwrap();
    assert_eq!(spool.memory_held(), 140 * 1024);
    assert_eq!(names(&tmp.path().join("incoming")).len(), 1);
    // The first one grows past the budget: it goes to the disk with what it had.
    first.write_blocking(&block).unwrap();
    assert_eq!(spool.memory_held(), 0);
    assert_eq!(names(&tmp.path().join("incoming")).len(), 2);
    let mut body = Vec::new();
    first
        .body_file_blocking()
        .unwrap()
        .read_to_end(&mut body)
        .unwrap();
    assert_eq!(body.len(), 3 * block.len());
    assert!(body.iter().all(|&b| b == b'x'));
    first.abort().unwrap();
    second.abort().unwrap();
    assert!(names(&tmp.path().join("incoming")).is_empty());
}

#[test]
fn readers_of_a_body_in_memory_have_their_own_offsets() {
    let tmp = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(tmp.path()).unwrap();
    let mut w = spool.begin_message_blocking().unwrap();
    w.write_blocking(b"Subject: three\r\n\r\nshared\r\n")
        .unwrap();
    let mut files = w.body_files_blocking(3).unwrap();
    assert_eq!(files.len(), 3);
    // Reading one to the end leaves the others at the start.
    for f in &mut files {
        let mut text = String::new();
        f.read_to_string(&mut text).unwrap();
        assert_eq!(text, "Subject: three\r\n\r\nshared\r\n");
    }
    assert!(names(&tmp.path().join("incoming")).is_empty());
    w.discard_blocking();
    assert!(names(&tmp.path().join("spare")).is_empty());
}

#[test]
fn a_message_whose_envelopes_are_all_corrupt_keeps_its_body_in_corrupt() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let layout = Layout::new(root);
    let (msgid, bad) = {
        let (spool, _) = Spool::open(root).unwrap();
        let (msgid, envs) = commit_message(&spool, b"the body", 1);
        std::fs::write(layout.envelope_file(envs[0].id), b"garbage\n").unwrap();
        (msgid, envs[0].id)
    };
    let (spool, recovery) = Spool::open(root).unwrap();
    assert!(recovery.envelopes.is_empty());
    assert!(recovery.purged.is_empty());
    assert_eq!(spool.messages().unwrap(), vec![]);
    assert!(!layout.message_dir(msgid).exists());
    let kept = root.join(format!("corrupt/{msgid}"));
    assert_eq!(
        std::fs::read(kept.join(bad.to_string())).unwrap(),
        b"garbage\n"
    );
    assert!(
        std::fs::read(kept.join("message"))
            .unwrap()
            .ends_with(b"the body")
    );
}
