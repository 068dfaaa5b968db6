//! `mda limit max-session-per-user` on the built daemon: queued messages for one user are
//! delivered by an `mda` command no more than N at a time. The command records how many
//! of its kind run at once; the daemon holds the mail (`-P mda`) until all of it is queued,
//! then `smtpctl resume mda` lets it go together.

mod common;
use common::{Daemon, vmail};

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

/// Marks itself running in `$1`, notes how many run, stays a moment, then leaves.
const SCRIPT: &str = "#!/bin/sh\n\
dir=\"$1\"\n\
cat > /dev/null\n\
touch \"$dir/run.$$\"\n\
ls \"$dir\" | grep -c '^run\\.' >> \"$dir/counts\"\n\
sleep 1\n\
rm -f \"$dir/run.$$\"\n\
echo done >> \"$dir/done\"\n";

/// The most deliveries seen at once for `per_user` slots, over `n` messages.
fn most_at_once(per_user: Option<u32>, n: usize) -> usize {
    let dir = tempfile::tempdir().unwrap();
    let (_vmail, ids) = vmail(dir.path());
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o777)).unwrap();
    let script = dir.path().join("slow.sh");
    std::fs::write(&script, SCRIPT).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let limit = per_user
        .map(|p| format!("mda limit max-session-per-user {p}\n"))
        .unwrap_or_default();
    let conf = format!(
        "{limit}table users {{ alice = \"{ids}:/var/empty\" }}\n\
         listen on 127.0.0.1 port PORT hostname mx.test\n\
         action \"slow\" mda \"{} {}\" userbase <users>\n\
         match from any for domain \"example.org\" action \"slow\"\n",
        script.display(),
        work.display()
    );
    let d = Daemon::start(dir.path(), &conf, &["-P", "mda"]);
    for i in 0..n {
        let r = common::send_mail(
            d.port,
            "bob@elsewhere.test",
            "alice@example.org",
            &format!("Subject: {i}\r\n\r\nx\r\n"),
        );
        assert!(r[5].starts_with("250 "), "{r:?}");
    }
    let spool = dir.path().join("spool");
    let out = common::smtpctl(&spool, &["resume", "mda"]);
    assert!(out.status.success(), "{out:?}");
    let done = work.join("done");
    let t = Instant::now();
    while std::fs::read_to_string(&done)
        .unwrap_or_default()
        .lines()
        .count()
        < n
    {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "not all delivered: {}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let counts = std::fs::read_to_string(work.join("counts")).unwrap();
    d.stop();
    counts
        .lines()
        .filter_map(|l| l.trim().parse::<usize>().ok())
        .max()
        .unwrap_or(0)
}

#[test]
fn one_user_gets_at_most_max_session_per_user_deliveries_at_once() {
    assert_eq!(most_at_once(Some(1), 3), 1, "one at a time");
    // With room for all of them, they do overlap (each takes a second).
    assert!(most_at_once(Some(4), 3) >= 2);
}
