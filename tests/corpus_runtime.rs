//! The real-world configurations of the corpus that OpenSMTPD 6.8 accepts, run for real:
//! each one starts under OpenSMTPD and under smtpd, each in a network namespace of its own
//! (so that both take ports 25 and 587 of their own loopback), and a client holds the same
//! plain dialogue with every listener (banner, EHLO, MAIL, a local and a foreign RCPT,
//! QUIT). Both must answer the same, line for line — or both stop at start-up (a filter
//! program that is not installed). smtpd's `250-PIPELINING` is left out (a documented
//! difference); TLS-on-connect listeners (465) are not probed.
//!
//! Needs root, `unshare` and `mount` (util-linux), python3 for the probe
//! (`tests/corpus_runtime_probe.py`), and OpenSMTPD named by `SMTPD_REFERENCE` (`.ci/run`
//! installs all of them); otherwise it says what is missing and checks nothing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// Plain listener ports the corpus configurations use.
const PORTS: &str = "25 587 10025 10026 10028 10029";

fn missing_tools(reference: &Option<PathBuf>) -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root".into());
    }
    if reference.is_none() {
        return Some("SMTPD_REFERENCE not set".into());
    }
    let works = |cmd: &mut Command| cmd.output().is_ok_and(|o| o.status.success());
    if !works(Command::new("unshare").args(["-n", "-m", "true"])) {
        return Some("cannot make network and mount namespaces (unshare -n -m)".into());
    }
    if !works(Command::new("python3").arg("-c").arg("pass")) {
        return Some("no python3".into());
    }
    None
}

/// The probe's transcript of one MTA on one configuration; `(transcript, log)`.
fn probe(mta: &[&str], isolate: &[&str], work: &Path, tag: &str) -> (String, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus_runtime_probe.py");
    let log = work.join(format!("{tag}.log"));
    let out = Command::new("unshare")
        .args(isolate)
        .arg("python3")
        .arg(&script)
        .args(mta)
        .env("PROBE_LOG", &log)
        .env("PROBE_PORTS", PORTS)
        .output()
        .expect("run the probe");
    let transcript = String::from_utf8_lossy(&out.stdout).into_owned();
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        out.status.success(),
        "probe failed: {}\n{log}",
        String::from_utf8_lossy(&out.stderr)
    );
    (transcript, log)
}

#[test]
fn real_configurations_answer_as_opensmtpd_does() {
    let reference = std::env::var_os("SMTPD_REFERENCE").map(PathBuf::from);
    if let Some(why) = missing_tools(&reference) {
        eprintln!("SKIPPED: {why}: runtime comparison of the corpus not run");
        return;
    }
    let reference = reference.unwrap_or_default();
    let ours = env!("CARGO_BIN_EXE_smtpd");
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let dir = tempfile::tempdir().unwrap();
    let stubs = dir.path().join("stubs");
    std::fs::create_dir(&stubs).unwrap();
    for e in std::fs::read_dir(corpus.join("stubs")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), stubs.join(e.file_name())).unwrap();
    }
    // Both refuse a private key others may read.
    std::fs::set_permissions(
        stubs.join("key.pem"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    // OpenSMTPD's spool is compiled in: each run mounts a fresh one over it, in a mount
    // namespace of its own (with its own /run for the control socket).
    std::fs::create_dir_all("/var/spool/smtpd").unwrap();

    let table = std::fs::read_to_string(corpus.join("real.tsv")).unwrap();
    let ids: Vec<String> = table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f.get(6) == Some(&"OK")).then(|| f[0].to_string())
        })
        .collect();
    assert!(ids.len() >= 30, "{} accepted configurations", ids.len());

    let results: Mutex<Vec<(String, Result<String, String>)>> = Mutex::new(Vec::new());
    let next = Mutex::new(ids.clone().into_iter());
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                loop {
                    let Some(id) = next.lock().unwrap().next() else {
                        return;
                    };
                    let outcome = compare_one(&id, &corpus, &stubs, dir.path(), &reference, ours);
                    results.lock().unwrap().push((id, outcome));
                }
            });
        }
    });
    let mut results = results.into_inner().unwrap();
    results.sort();
    let mut differences = Vec::new();
    let (mut running, mut stopped, mut dialogues) = (0, 0, 0);
    for (id, outcome) in &results {
        match outcome {
            Ok(transcript) => {
                if transcript.starts_with("running") {
                    running += 1;
                } else {
                    stopped += 1;
                }
                dialogues += transcript.matches("\n== ").count();
            }
            Err(diff) => differences.push(format!("{id}:\n{diff}")),
        }
    }
    println!(
        "{} configurations: {running} running ({dialogues} dialogues), {stopped} stopped at start-up, {} different",
        results.len(),
        differences.len()
    );
    assert!(differences.is_empty(), "{}", differences.join("\n"));
    assert!(running >= 20 && dialogues >= 20, "too little was compared");
}

/// Runs one configuration under both; `Ok(transcript)` when they agree.
fn compare_one(
    id: &str,
    corpus: &Path,
    stubs: &Path,
    dir: &Path,
    reference: &Path,
    ours: &str,
) -> Result<String, String> {
    let work = dir.join(id);
    std::fs::create_dir(&work).unwrap();
    let conf = work.join("smtpd.conf");
    let text = std::fs::read_to_string(corpus.join("real").join(format!("{id}.conf"))).unwrap();
    std::fs::write(&conf, text.replace("@STUBS@", stubs.to_str().unwrap())).unwrap();
    let conf = conf.to_str().unwrap();

    let ref_spool = work.join("ref-spool");
    std::fs::create_dir(&ref_spool).unwrap();
    std::fs::set_permissions(
        &ref_spool,
        std::os::unix::fs::PermissionsExt::from_mode(0o711),
    )
    .unwrap();
    let setup = format!(
        "mount --bind '{}' /var/spool/smtpd && mount -t tmpfs tmpfs /run && exec \"$@\"",
        ref_spool.display()
    );
    let reference = reference.to_str().unwrap();
    let (theirs, their_log) = probe(
        &[reference, "-d", "-f", conf],
        &["-n", "-m", "sh", "-c", &setup, "sh"],
        &work,
        "opensmtpd",
    );
    let spool = work.join("spool");
    let spool = spool.to_str().unwrap();
    let (mine, my_log) = probe(
        &[ours, "-d", "-f", conf, "--spool", spool],
        &["-n"],
        &work,
        "smtpd",
    );
    // smtpd offers PIPELINING, OpenSMTPD 6.8 does not (compatibility.md §3.2); after a
    // lost filter program smtpd exits with status 1 where 6.8 exits with 0 (§3.16).
    let seen = |t: &str, ours: bool| -> String {
        t.lines()
            .filter(|l| !(ours && *l == "S: 250-PIPELINING"))
            .map(|l| {
                if l.starts_with("exited ") {
                    "exited\n".to_string()
                } else {
                    format!("{l}\n")
                }
            })
            .collect()
    };
    let (mine_seen, theirs_seen) = (seen(&mine, true), seen(&theirs, false));
    if mine_seen == theirs_seen {
        return Ok(theirs_seen);
    }
    let mut diff = String::new();
    let (a, b): (Vec<&str>, Vec<&str>) =
        (theirs_seen.lines().collect(), mine_seen.lines().collect());
    for i in 0..a.len().max(b.len()) {
        let (x, y) = (a.get(i).copied(), b.get(i).copied());
        if x != y {
            diff.push_str(&format!(
                "  line {i}: OpenSMTPD {x:?}\n          smtpd     {y:?}\n"
            ));
        }
    }
    Err(format!(
        "{diff}  OpenSMTPD log:\n{their_log}\n  smtpd log:\n{my_log}"
    ))
}
