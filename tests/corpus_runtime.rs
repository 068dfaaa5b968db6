//! The real-world configurations of the corpus that OpenSMTPD 6.8 accepts, run for real:
//! each one starts under OpenSMTPD and under smtpd, each in a network namespace of its own
//! (so that both take ports 25 and 587 of their own loopback), and a client holds the same
//! plain dialogue with every listener (banner, EHLO, MAIL, a local and a foreign RCPT,
//! QUIT). Both must answer the same, line for line — or both stop at start-up (a filter
//! program that is not installed). smtpd's `250-PIPELINING` is left out (a documented
//! difference); TLS-on-connect listeners (465) are not probed.
//!
//! The other tests hold dialogues with both on small configurations: odd and hostile
//! commands, relaying to a next hop on loopback that takes, defers and refuses recipients,
//! built-in filters, maildirs with a junk folder, alias and virtual expansion, `.forward`
//! files, `mda` and `lmtp`, local deliveries that fail (and smtpctl after them), message
//! content and size limits, session limits, delivery status notifications, smtpctl on the
//! queue, a filter program on a listener and on a relay action, relaying by MX (with a DNS
//! server in the namespace). The transcripts, the log lines, the mailboxes and what the
//! next hop is sent must be the same.
//!
//! Needs root, `unshare` and `mount` (util-linux), `ip` (iproute2), python3 for the probe
//! (`tests/corpus_runtime_probe.py`), and OpenSMTPD named by `SMTPD_REFERENCE` (`.ci/run`
//! installs all of them); otherwise it says what is missing and checks nothing.

mod common;

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
    if !works(Command::new("ip").arg("-V")) {
        return Some("no ip (iproute2)".into());
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
        common::skip(&format!("{why}: runtime comparison of the corpus not run"));
        return;
    }
    let reference = reference.unwrap_or_default();
    let ours = env!("CARGO_BIN_EXE_smtpd");
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let dir = tempfile::tempdir().unwrap();
    let stubs = common::corpus_stubs(dir.path());
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

/// What both must answer and log the same: odd and hostile commands, and a message to a
/// local user, to an alias of root and to a user that does not exist.
const DIALOGUES: &str = "\
HELO
EHLO
HELO a.example
HELO a.example
EHLO c.example
MAIL FROM:<x@client.example>
MAIL FROM:<x@client.example>
RSET
RCPT TO:<nobody@localhost>
DATA
QUIT

EHLO c.example
MAIL FROM:<x@client.example
MAIL FROM:x@client.example
MAIL FROM:<>
RCPT TO:<>
RCPT TO:<postmaster>
RCPT TO:<nobody@localhost> FOO=BAR
RCPT TO:<nobody@localhost> NOTIFY=NEVER
RCPT TO:<nobody@localhost> NOTIFY=WHAT
QUIT

EHLO c.example
NOOP
NOOP x
HELP
VRFY root
EXPN root
ETRN x
BDAT 10
FOO
AUTH PLAIN
STARTTLS
QUIT

EHLO c.example
MAIL FROM:<x@client.example> SIZE=999999999999
MAIL FROM:<x@client.example> BODY=8BITMIME
RCPT TO:<NOBODY@LOCALHOST>
RCPT TO:<nobody@[127.0.0.1]>
RCPT TO:<\"nobody\"@localhost>
RCPT TO:<@a,@b:nobody@localhost>
RCPT TO:<a..b@localhost>
RCPT TO:<nobody@-bad.example>
RCPT TO:<x@elsewhere.example>
RSET
QUIT

ehlo c.example
mail from:<x@client.example>
rcpt to:<nobody@localhost>
rcpt to:<postmaster@localhost>
rcpt to:<nosuchuser@localhost>
data
<DATA>
QUIT
";

/// Session ids, queue ids and times, which differ from run to run.
fn normalized(text: &str) -> String {
    let rules = [
        (r"\b[0-9a-f]{16}\b", "ID"),
        (r"\b[0-9a-f]{8}\b", "MSGID"),
        (
            r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun),? [^\n]*\d\d:\d\d:\d\d[^\n]*",
            "DATE",
        ),
        (r"<[0-9a-f]+@", "<ID@"),
        // How long a delivery took depends on the machine's load, not on the MTA.
        (r" delay=\d+s([ ,])", " delay=Ns$1"),
    ];
    let mut t = text.to_string();
    for (pattern, with) in rules {
        t = regex::Regex::new(pattern)
            .unwrap()
            .replace_all(&t, with)
            .into_owned();
    }
    t
}

/// The log lines that are about mail (not start-up), normalized and sorted: deliveries of
/// one message run side by side, so their order may differ.
fn mail_log(log: &str) -> Vec<String> {
    let mut lines: Vec<String> = log
        .lines()
        .filter(|l| {
            !(l.starts_with("info: ")
                || l.starts_with("warn: purge_task")
                || l.starts_with("warn: resolver")
                || *l == "Exiting")
        })
        .map(normalized)
        .collect();
    lines.sort();
    lines
}

/// What one MTA did in the dialogue probe: the transcript (and what the next hop was
/// sent, with `sink`), the log, and the mailboxes of `/var/mail`.
struct Probed {
    talk: String,
    log: String,
    mail: String,
}

/// Runs the dialogue probe on `script` against `mta` in network and mount namespaces of
/// its own, with `/var/mail` (and for OpenSMTPD, `spool_mount`, its spool and `/run`)
/// mounted from `work`. `sink` is the next hop's address, `quiet` how long the log must be
/// still before the MTA is stopped; `ctl`, smtpctl (with its first arguments) and the
/// `;`-separated commands to run with it then.
fn dialogue_probe(
    work: &Path,
    script: &Path,
    mta: &[&str],
    spool_mount: bool,
    scenario: &Scenario,
    smtpctl: &str,
    sendmail: &str,
) -> Probed {
    let probe = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/dialogue_probe.py");
    let mail = work.join("mail");
    std::fs::create_dir_all(&mail).unwrap();
    std::fs::set_permissions(&mail, std::os::unix::fs::PermissionsExt::from_mode(0o1777)).unwrap();
    let spool = work.join("spool");
    std::fs::create_dir(&spool).unwrap();
    std::fs::set_permissions(&spool, std::os::unix::fs::PermissionsExt::from_mode(0o711)).unwrap();
    let mut setup = format!("mount --bind '{}' /var/mail", mail.display());
    if spool_mount {
        setup.push_str(&format!(
            " && mount --bind '{}' /var/spool/smtpd && mount -t tmpfs tmpfs /run",
            spool.display()
        ));
    }
    if !scenario.home.is_empty() {
        let home = work.join("home");
        std::fs::create_dir(&home).unwrap();
        for (name, text) in scenario.home {
            std::fs::write(home.join(name), text).unwrap();
        }
        let uid = nix::unistd::User::from_name(HOME_USER)
            .unwrap()
            .expect("the backup user")
            .uid;
        for p in std::iter::once(home.clone()).chain(common::files_under(&home)) {
            std::os::unix::fs::chown(&p, Some(uid.as_raw()), None).unwrap();
        }
        setup.push_str(&format!(" && mount --bind '{}' {HOME_DIR}", home.display()));
    }
    if !scenario.dns.is_empty() {
        std::fs::write(work.join("zone"), scenario.dns).unwrap();
        std::fs::write(work.join("resolv.conf"), "nameserver 127.0.0.1\n").unwrap();
        setup.push_str(&format!(
            " && mount --bind '{}' /etc/resolv.conf",
            work.join("resolv.conf").display()
        ));
    }
    setup.push_str(" && exec \"$@\"");
    let log = work.join("log");
    let mut cmd = Command::new("unshare");
    cmd.args(["-n", "-m", "sh", "-c", &setup, "sh", "python3"])
        .arg(&probe)
        .arg(script)
        .args(mta)
        .env("PROBE_LOG", &log)
        .env("PROBE_QUIET", scenario.quiet.to_string())
        .env("PROBE_CTL", smtpctl)
        .env("PROBE_SENDMAIL", sendmail)
        .env("PROBE_CTL_RUN", scenario.commands);
    if let Some(sink) = scenario.sink {
        cmd.env("PROBE_SINK", sink);
    }
    if !scenario.dns.is_empty() {
        cmd.env("PROBE_DNS", work.join("zone"));
    }
    let out = cmd.output().expect("run the probe");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Mailboxes by name; in maildirs, each message by its folder (its file name is
    // random), the messages of a folder in the order of their text.
    let mut boxes: Vec<(String, String)> = common::files_under(&mail)
        .into_iter()
        .map(|p| {
            let rel = p.strip_prefix(&mail).unwrap().to_path_buf();
            let in_maildir = rel
                .parent()
                .and_then(|d| d.file_name())
                .is_some_and(|d| d == "new" || d == "cur" || d == "tmp");
            let name = if in_maildir {
                rel.with_file_name("MESSAGE")
            } else {
                rel
            };
            (
                name.to_string_lossy().into_owned(),
                mbox_sorted(&normalized(
                    &std::fs::read_to_string(&p).unwrap_or_default(),
                )),
            )
        })
        .collect();
    let home = work.join("home");
    for p in common::files_under(&home) {
        let rel = p.strip_prefix(&home).unwrap();
        boxes.push((
            format!("~{HOME_USER}/{}", rel.display()),
            mbox_sorted(&normalized(
                &std::fs::read_to_string(&p).unwrap_or_default(),
            )),
        ));
    }
    boxes.sort();
    let mailboxes: String = boxes
        .iter()
        .map(|(name, text)| format!("--- {name}\n{text}"))
        .collect();
    Probed {
        // smtpd offers PIPELINING, OpenSMTPD 6.8 does not (compatibility.md §3.2).
        talk: String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| *l != "S: 250-PIPELINING")
            .map(|l| format!("{l}\n"))
            .collect(),
        log: std::fs::read_to_string(&log).unwrap_or_default(),
        mail: mailboxes,
    }
}

/// An mbox's messages (normalized) in the order of their text: deliveries of one message to one
/// mailbox run side by side, so the order they were appended in may differ. Other text is
/// returned as it is.
fn mbox_sorted(text: &str) -> String {
    if !text.starts_with("From ") {
        return text.to_string();
    }
    let mut messages: Vec<&str> = Vec::new();
    let mut start = 0;
    for (at, _) in text.match_indices("\n\nFrom ") {
        messages.push(&text[start..at + 2]);
        start = at + 2;
    }
    messages.push(&text[start..]);
    // Ordered by their text without the random numbers of MIME boundaries.
    let boundary = regex::Regex::new(r"\b\d{10,20}/").unwrap();
    messages.sort_by_cached_key(|m| boundary.replace_all(m, "BOUNDARY/").into_owned());
    messages.concat()
}

/// What both must have done the same: the transcripts, the mail log lines and the
/// mailboxes, normalized.
fn assert_same(theirs: &Probed, mine: &Probed) {
    assert_eq!(normalized(&mine.talk), normalized(&theirs.talk));
    assert_eq!(
        mail_log(&mine.log),
        mail_log(&theirs.log),
        "{}\n{}",
        mine.log,
        theirs.log
    );
    assert_eq!(normalized(&mine.mail), normalized(&theirs.mail));
}

/// The user whose home a scenario may fill ([`Scenario::home`]), and that home, which
/// Debian's base system has.
const HOME_USER: &str = "backup";
const HOME_DIR: &str = "/var/backups";

/// One comparison of smtpd with OpenSMTPD.
#[derive(Default)]
struct Scenario<'a> {
    /// Its name, for the SKIPPED line.
    what: &'a str,
    /// The configuration both run.
    conf: &'a str,
    /// The dialogues (`tests/dialogue_probe.py`).
    script: &'a str,
    /// The next hop's address (`PROBE_SINK`), if any.
    sink: Option<&'a str>,
    /// How long the log must be still before the MTA is stopped, in seconds.
    quiet: u32,
    /// smtpctl commands run then, `;`-separated.
    commands: &'a str,
    /// Files (name, text) of [`HOME_USER`]'s home, a directory of the run's own mounted on
    /// [`HOME_DIR`], all owned by that user.
    home: &'a [(&'a str, &'a str)],
    /// More arguments for both daemons (`-T` trace categories).
    flags: &'a [&'a str],
    /// A zone (`NAME TYPE VALUE` lines) the probe's DNS server answers from, on
    /// 127.0.0.1:53, with `/etc/resolv.conf` naming it; empty: no DNS server.
    dns: &'a str,
}

/// Runs the scenario's script on its configuration under OpenSMTPD and under smtpd, then
/// its smtpctl commands (OpenSMTPD's smtpctl beside its smtpd); `(OpenSMTPD's, smtpd's)`,
/// or `None` (and a SKIPPED line naming the comparison) when OpenSMTPD or the tools are
/// missing.
fn both_probed(scenario: &Scenario) -> Option<(Probed, Probed)> {
    let reference = reference_for(scenario.what)?;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let conf_path = dir.join("smtpd.conf");
    std::fs::write(&conf_path, scenario.conf).unwrap();
    let script_path = dir.join("dialogues");
    std::fs::write(&script_path, scenario.script).unwrap();
    std::fs::create_dir_all("/var/spool/smtpd").unwrap();
    let conf = conf_path.to_str().unwrap();
    let their_ctl = reference.with_file_name("smtpctl");
    let their_args: Vec<&str> = [reference.to_str().unwrap(), "-d", "-f", conf]
        .into_iter()
        .chain(scenario.flags.iter().copied())
        .collect();
    let theirs = dialogue_probe(
        &dir.join("opensmtpd"),
        &script_path,
        &their_args,
        true,
        scenario,
        their_ctl.to_str().unwrap(),
        reference.with_file_name("sendmail").to_str().unwrap(),
    );
    let spool = dir.join("smtpd-spool");
    let my_ctl = format!(
        "{} --spool {}",
        env!("CARGO_BIN_EXE_smtpctl"),
        spool.display()
    );
    let my_sendmail = format!(
        "{} --spool {}",
        env!("CARGO_BIN_EXE_sendmail"),
        spool.display()
    );
    let mine = dialogue_probe(
        &dir.join("smtpd"),
        &script_path,
        &[
            env!("CARGO_BIN_EXE_smtpd"),
            "-d",
            "-f",
            conf,
            "--spool",
            spool.to_str().unwrap(),
        ]
        .into_iter()
        .chain(scenario.flags.iter().copied())
        .collect::<Vec<&str>>(),
        false,
        scenario,
        &my_ctl,
        &my_sendmail,
    );
    // For a look at the raw outputs: SMTPD_COMPARE_DUMP=DIR keeps them there.
    if let Some(dump) = std::env::var_os("SMTPD_COMPARE_DUMP") {
        let dump = Path::new(&dump).join(scenario.what.replace(' ', "-"));
        std::fs::create_dir_all(&dump).unwrap();
        for (who, p) in [("theirs", &theirs), ("mine", &mine)] {
            std::fs::write(dump.join(format!("{who}.talk")), &p.talk).unwrap();
            std::fs::write(dump.join(format!("{who}.log")), &p.log).unwrap();
            std::fs::write(dump.join(format!("{who}.mail")), &p.mail).unwrap();
        }
    }
    Some((theirs, mine))
}

/// Leaves out the empty mbox 6.8 makes for its own user: before it runs a file or command
/// delivery of an `mbox` action, 6.8 creates the mbox of the user it runs as (for an
/// alias's file or command, its own user) and never delivers to it; smtpd creates no
/// mailbox it does not deliver to (compatibility.md).
fn without_their_own_mbox(theirs: &mut Probed) {
    theirs.mail = theirs.mail.replace("--- opensmtpd\n", "");
}

/// Leaves out what differs in failure reports delivered locally for reasons of their own:
/// the MIME boundary (a random number: its length too, and with it the size the log gives
/// for a one-recipient message) and the leading dot 6.8's copy of the message drops
/// (compatibility.md, OpenSMTPD's bugs).
fn with_reports_normalized(theirs: &mut Probed, mine: &mut Probed) {
    theirs.mail = theirs.mail.replace("\nleading dot\n", "\n.leading dot\n");
    let boundary = regex::Regex::new(r"\b\d{10,20}/").unwrap();
    let size = regex::Regex::new(r"size=\d+ (nrcpt=1 proto=ESMTP)").unwrap();
    for p in [theirs, mine] {
        p.mail = boundary.replace_all(&p.mail, "BOUNDARY/").into_owned();
        p.log = size.replace_all(&p.log, "size=N $1").into_owned();
    }
}

/// [`assert_same`] on the dialogue without smtpctl's part (compared with [`ctl_seen`]),
/// without the empty mailbox 6.8 makes for its own user, and with failure reports
/// normalized ([`with_reports_normalized`]).
fn assert_same_apart_from_ctl_and_reports(theirs: Probed, mine: Probed) {
    let (mut theirs, mut mine) = (theirs, mine);
    for p in [&mut theirs, &mut mine] {
        without_ctl(p);
    }
    without_their_own_mbox(&mut theirs);
    with_reports_normalized(&mut theirs, &mut mine);
    assert_same(&theirs, &mine);
}

/// A temporary directory others may read (the daemons' users read files in it).
fn readable_tempdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    dir
}

/// Leaves the next hop's and smtpctl's parts out of the transcript (compared with
/// [`sink_seen`] and [`ctl_seen`]).
fn without_sink_and_ctl(p: &mut Probed) {
    p.talk = p.talk.split("== ").next().unwrap_or_default().to_string();
}

/// Leaves smtpctl's part out of the transcript (compared with [`ctl_seen`]).
fn without_ctl(p: &mut Probed) {
    p.talk = p
        .talk
        .split("== ctl ")
        .next()
        .unwrap_or_default()
        .to_string();
}

/// Leaves out of the log the lines that begin with one of `prefixes` (traces compared on
/// their own, or lines one MTA writes for reasons of its own).
fn without_log_lines(p: &mut Probed, prefixes: &[&str]) {
    p.log = p
        .log
        .lines()
        .filter(|l| !prefixes.iter().any(|prefix| l.starts_with(prefix)))
        .map(|l| format!("{l}\n"))
        .collect();
}

/// OpenSMTPD as `SMTPD_REFERENCE` names it, or `None` (and a SKIPPED line saying why the
/// `what` comparison is not run) when it or the tools are missing.
fn reference_for(what: &str) -> Option<PathBuf> {
    let reference = std::env::var_os("SMTPD_REFERENCE").map(PathBuf::from);
    if let Some(why) = missing_tools(&reference) {
        common::skip(&format!("{why}: {what} comparison not run"));
        return None;
    }
    reference
}

/// The start of the small configurations: a listener on `lo`, and local mail to mbox
/// with `postmaster` an alias of root.
const LOCAL_HEAD: &str = "listen on lo\n\
     table aliases { postmaster = root }\n\
     action \"local\" mbox alias <aliases>\n";

#[test]
fn dialogues_deliveries_and_logs_are_opensmtpds() {
    let Some((theirs, mine)) = both_probed(&Scenario {
        what: "dialogue",
        conf: &format!(
            "{LOCAL_HEAD}action \"out\" relay\n\
             match from local for local action \"local\"\n\
             match from local for any action \"out\"\n"
        ),
        script: DIALOGUES,
        quiet: 2,
        ..Default::default()
    }) else {
        return;
    };
    assert!(
        theirs.talk.matches("\nC: ").count() >= 50,
        "{}",
        theirs.talk
    );
    assert!(theirs.mail.contains("--- nobody\n"), "{}", theirs.mail);
    assert!(
        theirs.log.matches(" mda delivery ").count() == 2
            && theirs.log.contains(" smtp failed-command "),
        "{}",
        theirs.log
    );
    assert_same(&theirs, &mine);
}

/// What the next hop was sent, normalized: its sessions sorted, the RCPTs of one
/// transaction sorted (6.8 sends them in the order of its envelope ids, which are
/// random), MIME boundaries (random
/// numbers) replaced, and the line of the bounce's copy of the message where 6.8 drops
/// the leading dot (compatibility.md, OpenSMTPD's bugs) taken as 6.8 sends it.
fn sink_seen(talk: &str) -> String {
    let text = talk.split("== sink\n").nth(1).unwrap_or_default();
    let boundary = regex::Regex::new(r"\b\d{10,20}/").unwrap();
    let mut sessions: Vec<Vec<String>> = Vec::new();
    let mut rcpts: Vec<String> = Vec::new();
    for line in text.lines() {
        if line.starts_with("C: RCPT TO:") {
            rcpts.push(line.to_string());
            continue;
        }
        rcpts.sort();
        if line.starts_with("<connect from ") || sessions.is_empty() {
            sessions.push(Vec::new());
        }
        let out = sessions.last_mut().expect("a session");
        out.append(&mut rcpts);
        out.push(boundary.replace_all(line, "BOUNDARY/").into_owned());
    }
    if let Some(out) = sessions.last_mut() {
        out.append(&mut rcpts);
    }
    // Sessions that run side by side begin in an order of chance.
    let mut sessions: Vec<String> = sessions.iter().map(|s| normalized(&s.join("\n"))).collect();
    sessions.sort();
    sessions.join("\n")
}

/// Relayed mail, measured against 6.8: one message to four recipients of a next hop that
/// takes two, defers one and refuses one. The dialogue, what the next hop is sent (the
/// transaction, the message, the bounce to the sender relayed on the same session), and
/// the log lines (`mta connecting`, `mta connected`, `mta delivery` per recipient, the
/// bounce's local session) must be the same.
#[test]
fn relayed_mail_and_its_bounce_are_opensmtpds() {
    let Some((theirs, mine)) = both_probed(&Scenario {
        what: "relay",
        conf: &format!(
            "{LOCAL_HEAD}action \"out\" relay host smtp://127.0.0.2:2525\n\
             action \"dead\" relay host smtp://127.0.0.3:2525\n\
             match from local for local action \"local\"\n\
             match from local for domain dead.example action \"dead\"\n\
             match from local for any action \"out\"\n"
        ),
        script: "EHLO c.example\n\
         MAIL FROM:<x@client.example>\n\
         RCPT TO:<alice@far.example>\n\
         RCPT TO:<temp@far.example>\n\
         RCPT TO:<perm@far.example>\n\
         RCPT TO:<bob@far.example>\n\
         DATA\n\
         <DATA>\n\
         MAIL FROM:<y@client.example>\n\
         RCPT TO:<carol@dead.example>\n\
         DATA\n\
         <DATA>\n\
         QUIT\n",
        sink: Some("127.0.0.2:2525"),
        quiet: // 6.8 reports the dead relay's envelope about 11 s after its connection failed.
        12,
        commands: CTL_COMMANDS,
        ..Default::default()
    }) else {
        return;
    };
    let talk = |p: &Probed| normalized(p.talk.split("== ").next().unwrap_or_default());
    assert_eq!(talk(&mine), talk(&theirs));
    let their_sink = sink_seen(&theirs.talk).replace("\nD: leading dot\n", "\nD: ..leading dot\n");
    assert!(
        their_sink.contains("C: RCPT TO:<alice@far.example>\nC: RCPT TO:<bob@far.example>\n")
            && their_sink.contains("C: MAIL FROM:<>\nC: RCPT TO:<x@client.example>\n")
            && their_sink.contains("D: perm@far.example: 550 5.1.1 no such user\n"),
        "{their_sink}"
    );
    assert_eq!(sink_seen(&mine.talk), their_sink);
    // The bounce's size differs by the length of its random MIME boundary. (6.8 reports
    // the dead relay's envelope after about 11 s, smtpd at once: `delay=` is left out.)
    let sizes = regex::Regex::new(r"size=\d+ (nrcpt=1 proto=ESMTP)").unwrap();
    let log = |p: &Probed| {
        mail_log(&p.log)
            .into_iter()
            .map(|l| sizes.replace(&l, "size=N $1").into_owned())
            .collect::<Vec<_>>()
    };
    let theirs_log = log(&theirs);
    assert_eq!(
        theirs_log
            .iter()
            .filter(|l| l.contains(" mta delivery "))
            .count(),
        6,
        "{}",
        theirs.log
    );
    assert!(
        theirs_log
            .iter()
            .any(|l| l.starts_with("smtp-out: No valid route for ")),
        "{}",
        theirs.log
    );
    assert_eq!(log(&mine), theirs_log, "{}\n{}", mine.log, theirs.log);
    let their_ctl = ctl_seen(&theirs.talk);
    assert!(
        their_ctl.contains("|temp@far.example|TIME|TIME|LASTTRY|1|pending|N|451 4.2.0 try later\n")
            && their_ctl.contains("far.example|TIME|250 2.0.0 queued\n")
            && their_ctl.contains("== ctl show mta paused\n127.0.0.1 -> far.example\n"),
        "{their_ctl}"
    );
    assert_eq!(ctl_seen(&mine.talk), their_ctl);
}

/// What smtpctl is asked once the relaying is over: the queue (the deferred recipient and
/// the envelope for the dead relay, each tried once), the relays, routes and hosts (all
/// forgotten by then), the last result per domain, pausing a source for a domain, and
/// pausing relaying.
const CTL_COMMANDS: &str = "show queue;show relays;show routes;show hosts;show hoststats;\
     show mta paused;pause mta from 127.0.0.1 for far.example;show mta paused;\
     resume mta from 127.0.0.1 for far.example;show mta paused;pause mta;show status;\
     resume mta;show status";

/// The smtpctl part of a transcript, normalized: ids, times, and in `show queue` the time
/// of the last attempt (6.8 shows 0 once an attempt failed) and the seconds to the next
/// one; queue lines sorted (by envelope id, which is random).
fn ctl_seen(talk: &str) -> String {
    let text = talk
        .split("== sink\n")
        .next()
        .unwrap_or_default()
        .split_once("== ctl ")
        .map(|(_, rest)| format!("== ctl {rest}"))
        .unwrap_or_default();
    let times = regex::Regex::new(r"\|\d{10}\|").unwrap();
    let mut out: Vec<String> = Vec::new();
    let mut queue: Vec<String> = Vec::new();
    // `show stats`: 6.8's envelope cache counters have no smtpd counterpart
    // (smtpctl.md); how long each ran is its own.
    let uptime = regex::Regex::new(r"^uptime(\.human)?=\w+$").unwrap();
    for line in text.lines().filter(|l| !l.starts_with("queue.evpcache.")) {
        if uptime.is_match(line) {
            out.push(line.split('=').next().unwrap_or_default().to_string() + "=UPTIME");
            continue;
        }
        let fields: Vec<&str> = line.split('|').collect();
        if fields.len() == 14 {
            let mut f: Vec<String> = fields.iter().map(|s| s.to_string()).collect();
            f[0] = "ID".into();
            f[7] = "TIME".into();
            f[8] = "TIME".into();
            f[9] = "LASTTRY".into();
            f[12] = "N".into();
            queue.push(f.join("|"));
            continue;
        }
        queue.sort();
        out.append(&mut queue);
        out.push(times.replace_all(line, "|TIME|").into_owned());
    }
    queue.sort();
    out.append(&mut queue);
    // `show envelope`: times of its own, and the last attempt, which 6.8 does not keep
    // (it writes 0); `show message`: ids and dates.
    let envelope_times = regex::Regex::new(r"(?m)^(ctime|last-try): \d+$").unwrap();
    let text = out.join("\n") + "\n";
    normalized(&envelope_times.replace_all(&text, "$1: TIME"))
}

/// Built-in filters on a listener, measured against 6.8: a decision of each kind
/// (`report`, `disconnect`, `reject`, `junk`, `rewrite`) at each phase (connect, helo,
/// ehlo, mail-from, rcpt-to, data, commit), with `src` tables, regular expressions and a
/// recipient table. The dialogues, the log lines (the message sizes too: with filters on
/// the listener, 6.8 counts its own header lines twice) and the mailboxes must be the same.
/// Nothing is sent after a disconnection: whether the client then reads an end of stream
/// or a reset depends on timing, in 6.8 as in smtpd.
#[test]
fn builtin_filters_answer_and_log_as_opensmtpd() {
    let Some((theirs, mine)) = both_probed(&Scenario {
        what: "filter",
        conf: "table aliases { postmaster = root }\n\
         table badrcpt { \"spamtrap@localhost\" }\n\
         table lab { 127.0.0.0/8 }\n\
         filter \"helo-bad\" phase helo match helo regex \"^bad\\.\" disconnect \"421 go away\"\n\
         filter \"ehlo-bad\" phase ehlo match helo regex \"^bad\\.\" reject \"550 5.7.1 bad helo\"\n\
         filter \"src-lab\" phase connect match src <lab> report \"lab client\"\n\
         filter \"from-spam\" phase mail-from match mail-from regex \"^spam@\" reject \"550 5.7.1 no spam\"\n\
         filter \"from-junk\" phase mail-from match mail-from regex \"^junk@\" junk\n\
         filter \"rcpt-trap\" phase rcpt-to match rcpt-to <badrcpt> reject \"550 5.1.1 trap\"\n\
         filter \"rcpt-rw\" phase rcpt-to match rcpt-to regex \"^rewrite@\" rewrite \"451 4.7.1 try again\"\n\
         filter \"data-x\" phase data match mail-from regex \"^nodata@\" reject \"554 5.7.1 no data for you\"\n\
         filter \"commit-x\" phase commit match mail-from regex \"^nocommit@\" disconnect \"421 4.7.0 not committing\"\n\
         filter \"chain\" chain { \"src-lab\", \"helo-bad\", \"ehlo-bad\", \"from-spam\", \"from-junk\", \"rcpt-trap\", \"rcpt-rw\", \"data-x\", \"commit-x\" }\n\
         listen on lo filter \"chain\"\n\
         action \"local\" mbox alias <aliases>\n\
         match from local for local action \"local\"\n",
        script: "EHLO bad.example\n\
         EHLO good.example\n\
         MAIL FROM:<spam@client.example>\n\
         MAIL FROM:<ok@client.example>\n\
         RCPT TO:<spamtrap@localhost>\n\
         RCPT TO:<rewrite@localhost>\n\
         RCPT TO:<nobody@localhost>\n\
         DATA\n\
         <DATA>\n\
         QUIT\n\
         \n\
         HELO bad.example\n\
         \n\
         EHLO good.example\n\
         MAIL FROM:<nodata@client.example>\n\
         RCPT TO:<nobody@localhost>\n\
         DATA\n\
         QUIT\n\
         \n\
         EHLO good.example\n\
         MAIL FROM:<nocommit@client.example>\n\
         RCPT TO:<nobody@localhost>\n\
         DATA\n\
         <DATA>\n\
         \n\
         EHLO good.example\n\
         MAIL FROM:<junk@client.example>\n\
         RCPT TO:<nobody@localhost>\n\
         DATA\n\
         <DATA>\n\
         QUIT\n",
        quiet: 2,
        ..Default::default()
    }) else {
        return;
    };
    assert!(
        theirs.talk.contains("S: 421 4.7.0 not committing\n")
            && theirs.talk.contains("S: 550 5.1.1 trap\n"),
        "{}",
        theirs.talk
    );
    assert!(theirs.mail.contains("X-Spam: Yes\n"), "{}", theirs.mail);
    assert_same(&theirs, &mine);
}

/// Maildir delivery with a junk folder, measured against 6.8: a message to a user and to
/// an alias of root (which neither delivers to), one marked junk by a filter, and the
/// failure report for root's copy, which no rule accepts for the remote sender. The
/// dialogue, the log lines (the report's refused local session and `PermFail injecting
/// failure report`) and the maildirs (`new/` and `.Junk/new/`) must be the same.
#[test]
fn maildir_junk_and_refused_reports_are_opensmtpds() {
    let Some((theirs, mine)) = both_probed(&Scenario {
        what: "maildir",
        conf: "table aliases { postmaster = root }\n\
         filter \"from-junk\" phase mail-from match mail-from regex \"^junk@\" junk\n\
         listen on lo filter \"from-junk\"\n\
         action \"m\" maildir \"/var/mail/%{user.username}\" junk alias <aliases>\n\
         match from local for local action \"m\"\n",
        script: "EHLO good.example\n\
         MAIL FROM:<ok@client.example>\n\
         RCPT TO:<nobody@localhost>\n\
         RCPT TO:<postmaster@localhost>\n\
         DATA\n\
         <DATA>\n\
         MAIL FROM:<junk@client.example>\n\
         RCPT TO:<nobody@localhost>\n\
         DATA\n\
         <DATA>\n\
         QUIT\n",
        quiet: 2,
        ..Default::default()
    }) else {
        return;
    };
    assert!(
        theirs
            .log
            .contains("warn: PermFail injecting failure report on message "),
        "{}",
        theirs.log
    );
    assert!(
        theirs.mail.contains("--- nobody/.Junk/new/MESSAGE\n")
            && theirs.mail.contains("--- nobody/new/MESSAGE\n"),
        "{}",
        theirs.mail
    );
    assert_same(&theirs, &mine);
}

/// Alias and virtual expansion, measured against 6.8: lists, nested and looping aliases,
/// `:include:` files, delivery to a file and to a command, `error:` targets, and a virtual
/// table with a catch-all. The replies to each RCPT, the log lines and the mailboxes
/// (the file and what the command wrote among them) must be the same.
#[test]
fn alias_and_virtual_expansion_is_opensmtpds() {
    let files = readable_tempdir();
    let include = files.path().join("team");
    std::fs::write(&include, "# the team\nnobody\n\nroot, postmaster\n").unwrap();
    let Some((theirs, mine)) = both_probed(&Scenario {
        what: "expansion",
        conf: &format!(
            "table aliases {{ postmaster = root, list = \"nobody, root\", nested = list, \
             loop = loop2, loop2 = loop, filer = \"/var/mail/filed\", \
             cmd = \"|/bin/sh -c 'cat > /var/mail/cmdout'\", \
             err = \"error:550 5.1.1 list closed\", tmperr = \"error:450 4.2.1 later\", \
             inc = \":include:{}\", self = \"self, nobody\" }}\n\
             table virt {{ \"list@virt.example\" = \"nobody, root\", \
             \"gone@virt.example\" = \"error:550 5.1.1 gone\", \
             \"@virt.example\" = nobody }}\n\
             listen on lo\n\
             action \"local\" mbox alias <aliases>\n\
             action \"virt\" mbox virtual <virt>\n\
             match from local for domain \"virt.example\" action \"virt\"\n\
             match from local for local action \"local\"\n",
            include.display()
        ),
        script: "EHLO c.example\n\
         MAIL FROM:<x@client.example>\n\
         RCPT TO:<list@localhost>\n\
         RCPT TO:<nested@localhost>\n\
         RCPT TO:<loop@localhost>\n\
         RCPT TO:<filer@localhost>\n\
         RCPT TO:<cmd@localhost>\n\
         RCPT TO:<err@localhost>\n\
         RCPT TO:<tmperr@localhost>\n\
         RCPT TO:<inc@localhost>\n\
         RCPT TO:<self@localhost>\n\
         RCPT TO:<list@virt.example>\n\
         RCPT TO:<anyone@virt.example>\n\
         RCPT TO:<gone@virt.example>\n\
         DATA\n\
         <DATA>\n\
         QUIT\n",
        quiet: 3,
        ..Default::default()
    }) else {
        return;
    };
    assert!(
        theirs
            .talk
            .contains("S: 524 5.2.4 Mailing list expansion problem: <loop@localhost>\n")
            && theirs
                .talk
                .contains("S: 450 4.2.1 later: <tmperr@localhost>\n")
            && theirs
                .mail
                .contains("--- cmdout\nReturn-Path: <x@client.example>\n")
            && theirs.mail.contains("--- filed\nFrom x@client.example "),
        "{}{}",
        theirs.talk,
        theirs.mail
    );
    let mut theirs = theirs;
    assert!(
        theirs.mail.contains("--- opensmtpd\n--- "),
        "{}",
        theirs.mail
    );
    without_their_own_mbox(&mut theirs);
    assert_same(&theirs, &mine);
}

/// `.forward` files and the other local methods, measured against 6.8: a user's
/// `.forward` that keeps a copy, pipes one to a command, appends one to a file and sends
/// one on to root; an `mda` action with format specifiers; and an `lmtp` action to a
/// server on loopback. The replies, the log lines, the mailboxes, the files the deliveries
/// wrote in the user's home and what the LMTP server was sent must be the same.
#[test]
fn forward_files_mda_and_lmtp_are_opensmtpds() {
    let Some((theirs, mine)) = both_probed(&Scenario {
        what: "forward",
        conf: "table aliases { postmaster = root }\n\
               listen on lo\n\
               action \"local\" mbox alias <aliases>\n\
               action \"mda\" mda \"/bin/sh -c 'cat > /var/mail/mda.%{user.username}.%{rcpt.user}'\"\n\
               action \"lmtp\" lmtp \"127.0.0.2:2525\" rcpt-to\n\
               match from local for domain \"mda.example\" action \"mda\"\n\
               match from local for domain \"lmtp.example\" action \"lmtp\"\n\
               match from local for local action \"local\"\n",
        script: "EHLO c.example\n\
                 MAIL FROM:<x@client.example>\n\
                 RCPT TO:<backup@localhost>\n\
                 RCPT TO:<nobody@mda.example>\n\
                 RCPT TO:<nobody@lmtp.example>\n\
                 DATA\n\
                 <DATA>\n\
                 QUIT\n",
        sink: Some("127.0.0.2:2525"),
        quiet: 3,
        home: &[(
            ".forward",
            "backup\n|/bin/sh -c 'cat > /var/backups/piped'\n/var/backups/saved\nroot\n",
        )],
        ..Default::default()
    }) else {
        return;
    };
    assert!(
        theirs.log.matches(" mda delivery ").count() == 6
            && theirs
                .mail
                .contains("--- ~backup/saved\nFrom x@client.example ")
            && theirs.mail.contains("--- ~backup/piped\nReturn-Path: ")
            && sink_seen(&theirs.talk).contains("C: LHLO localhost\n"),
        "{}{}{}",
        theirs.talk,
        theirs.log,
        theirs.mail
    );
    assert_same(&theirs, &mine);
    assert_eq!(sink_seen(&mine.talk), sink_seen(&theirs.talk));
}

/// Local deliveries that fail, measured against 6.8: a command that fails for good (the
/// sender, a local user, gets the failure report in its mailbox) and one that asks to be
/// tried again (it stays in the queue, and smtpctl shows it). The replies, log lines,
/// mailboxes (the report's text) and what smtpctl prints must be the same.
#[test]
fn failed_local_deliveries_and_their_reports_are_opensmtpds() {
    let Some((theirs, mine)) = both_probed(&Scenario {
        what: "local failure",
        conf: "table aliases { postmaster = root, \
               fails = \"|/bin/sh -c 'echo no such folder >&2; exit 1'\", \
               later = \"|/bin/sh -c 'echo busy >&2; exit 75'\" }\n\
               listen on lo\n\
               action \"local\" mbox alias <aliases>\n\
               match from local for local action \"local\"\n",
        script: "EHLO c.example\n\
                 MAIL FROM:<nobody@localhost>\n\
                 RCPT TO:<fails@localhost>\n\
                 RCPT TO:<later@localhost>\n\
                 DATA\n\
                 <DATA>\n\
                 QUIT\n",
        quiet: 3,
        commands: "show queue;show stats",
        ..Default::default()
    }) else {
        return;
    };
    let their_ctl = ctl_seen(&theirs.talk);
    assert!(
        their_ctl.contains("|nobody@localhost|later@localhost|later@localhost|TIME|TIME|LASTTRY|1|pending|N|\"busy\"\n")
            && their_ctl.contains("\nscheduler.delivery.ok=2\n")
            && their_ctl.contains("\nsmtp.session.local=1\n"),
        "{their_ctl}"
    );
    assert_eq!(ctl_seen(&mine.talk), their_ctl);
    assert!(
        theirs
            .mail
            .contains("\nfails@localhost: \"no such folder\"\n"),
        "{}",
        theirs.mail
    );
    // The dialogue apart from smtpctl's part, compared above.
    assert_same_apart_from_ctl_and_reports(theirs, mine);
}

/// What a message becomes, measured against 6.8: no header at all, bare LFs, 8-bit text
/// with and without `BODY=8BITMIME`, a full set of headers (a forged `Return-Path`, an
/// older `Received`, a folded header), a line longer than 1,000 bytes, and a message over
/// `smtp max-message-size` (announced with `SIZE=`, then sent). The replies, the log lines
/// and the mailbox must be the same.
#[test]
fn message_content_and_limits_are_opensmtpds() {
    let Some((theirs, mine)) = both_probed(&Scenario {
        what: "message",
        conf: "table aliases { postmaster = root }\n\
               smtp max-message-size 3000\n\
               listen on lo\n\
               action \"local\" mbox alias <aliases>\n\
               match from local for local action \"local\"\n",
        script: "EHLO c.example\n\
                 MAIL FROM:<x@client.example>\n\
                 RCPT TO:<nobody@localhost>\n\
                 DATA\n\
                 <DATA:bare>\n\
                 MAIL FROM:<x@client.example>\n\
                 RCPT TO:<nobody@localhost>\n\
                 DATA\n\
                 <DATA:lf>\n\
                 MAIL FROM:<x@client.example>\n\
                 RCPT TO:<nobody@localhost>\n\
                 DATA\n\
                 <DATA:8bit>\n\
                 MAIL FROM:<x@client.example> BODY=8BITMIME\n\
                 RCPT TO:<nobody@localhost>\n\
                 DATA\n\
                 <DATA:8bit>\n\
                 MAIL FROM:<x@client.example>\n\
                 RCPT TO:<nobody@localhost>\n\
                 DATA\n\
                 <DATA:headers>\n\
                 QUIT\n\
                 \n\
                 EHLO c.example\n\
                 MAIL FROM:<x@client.example>\n\
                 RCPT TO:<nobody@localhost>\n\
                 DATA\n\
                 <DATA:longline>\n\
                 QUIT\n\
                 \n\
                 EHLO c.example\n\
                 MAIL FROM:<x@client.example> SIZE=5000\n\
                 MAIL FROM:<x@client.example>\n\
                 RCPT TO:<nobody@localhost>\n\
                 DATA\n\
                 <DATA:big>\n\
                 QUIT\n",
        quiet: 3,
        ..Default::default()
    }) else {
        return;
    };
    assert!(
        theirs.talk.contains("S: 550 5.7.1 Delivery not authorized, message refused: Message is not RFC 2822 compliant\n")
            && theirs.talk.contains("S: 554 5.3.4 Message too big for system: Transaction failed, message too big\n")
            && theirs.mail.contains("\nReturn-Path: <forged@elsewhere.example>\n")
            && theirs.log.matches(" mda delivery ").count() == 5,
        "{}{}{}",
        theirs.talk,
        theirs.log,
        theirs.mail
    );
    assert_same(&theirs, &mine);
}

/// Delivery status notifications for local mail, measured against 6.8: `NOTIFY=SUCCESS`
/// with `ORCPT`, `RET=HDRS` and `ENVID` (a success report), `NOTIFY=FAILURE` and
/// `NOTIFY=NEVER` on a recipient that fails, and a report to a sender whose report is not
/// wanted back. The replies, log lines and mailboxes (the reports' texts) must be the same.
#[test]
fn local_delivery_reports_are_opensmtpds() {
    let Some((theirs, mine)) = both_probed(&Scenario {
        what: "dsn",
        conf: "table aliases { postmaster = root, \
               fails = \"|/bin/sh -c 'echo refused >&2; exit 1'\" }\n\
               listen on lo\n\
               action \"local\" mbox alias <aliases>\n\
               match from local for local action \"local\"\n",
        script: "EHLO c.example\n\
                 MAIL FROM:<nobody@localhost> RET=HDRS ENVID=env-1\n\
                 RCPT TO:<root@localhost> NOTIFY=SUCCESS ORCPT=rfc822;Root@localhost\n\
                 DATA\n\
                 <DATA>\n\
                 MAIL FROM:<nobody@localhost>\n\
                 RCPT TO:<fails@localhost> NOTIFY=FAILURE,DELAY\n\
                 DATA\n\
                 <DATA>\n\
                 MAIL FROM:<nobody@localhost> RET=FULL\n\
                 RCPT TO:<fails@localhost> NOTIFY=NEVER\n\
                 DATA\n\
                 <DATA>\n\
                 MAIL FROM:<>\n\
                 RCPT TO:<fails@localhost>\n\
                 DATA\n\
                 <DATA>\n\
                 QUIT\n",
        quiet: 3,
        ..Default::default()
    }) else {
        return;
    };
    assert!(
        theirs.log.contains("warn: queue: no return path!\n")
            && theirs.mail.contains("\nroot@localhost: \n")
            && theirs.mail.contains("\nfails@localhost: \"refused\"\n")
            && theirs
                .mail
                .matches("Subject: Delivery status notification: ")
                .count()
                == 2,
        "{}{}",
        theirs.log,
        theirs.mail
    );
    let (mut theirs, mut mine) = (theirs, mine);
    without_their_own_mbox(&mut theirs);
    with_reports_normalized(&mut theirs, &mut mine);
    assert_same(&theirs, &mine);
}

/// Session limits, measured against 6.8: `smtp limit max-rcpt` and `max-mails`, a command
/// line longer than SMTP allows (nothing is sent after it: once the server has closed,
/// whether the client reads an end of stream or a reset depends on timing), a very long
/// address, and unknown commands piling up. The replies and log lines must be the same.
#[test]
fn session_limits_are_opensmtpds() {
    let long_local = "a".repeat(300);
    let long_line = format!("NOOP {}", "x".repeat(2100));
    let script = format!(
        "EHLO c.example\n\
         MAIL FROM:<x@client.example>\n\
         RCPT TO:<nobody@localhost>\n\
         RCPT TO:<root@localhost>\n\
         RCPT TO:<postmaster@localhost>\n\
         RCPT TO:<nobody@localhost>\n\
         DATA\n\
         <DATA>\n\
         MAIL FROM:<x@client.example>\n\
         RCPT TO:<nobody@localhost>\n\
         DATA\n\
         <DATA>\n\
         MAIL FROM:<x@client.example>\n\
         QUIT\n\
         \n\
         EHLO c.example\n\
         MAIL FROM:<{long_local}@client.example>\n\
         MAIL FROM:<x@client.example>\n\
         RCPT TO:<{long_local}@localhost>\n\
         QUIT\n\
         \n\
         EHLO c.example\n\
         {long_line}\n\
         \n\
         EHLO c.example\n\
         FOO1\n\
         FOO2\n\
         FOO3\n\
         FOO4\n\
         FOO5\n\
         FOO6\n\
         FOO7\n\
         NOOP\n\
         QUIT\n"
    );
    let Some((theirs, mine)) = both_probed(&Scenario {
        what: "limits",
        conf: "table aliases { postmaster = root }\n\
               smtp limit max-mails 2 max-rcpt 3\n\
               listen on lo\n\
               action \"local\" mbox alias <aliases>\n\
               match from local for local action \"local\"\n",
        script: &script,
        quiet: 3,
        ..Default::default()
    }) else {
        return;
    };
    assert!(
        theirs
            .talk
            .contains("S: 451 4.5.3 Too many recipients: Too many recipients\n")
            && theirs
                .talk
                .contains("S: 452 4.5.3 Too many recipients: Too many messages sent\n")
            && theirs.talk.contains("S: 500 5.0.0 Command line too long\n")
            && theirs
                .log
                .contains(" smtp bad-input result=\"500 5.0.0 Command line too long\"\n"),
        "{}{}",
        theirs.talk,
        theirs.log
    );
    assert_same(&theirs, &mine);
}

/// smtpctl on a queued envelope, measured against 6.8: a local delivery that asks to be
/// tried again stays queued; `show queue`, `show envelope`, `show message`, `pause
/// envelope all`, `resume envelope all`, `remove all`, `schedule all` and `show stats`
/// then print the same.
#[test]
fn smtpctl_on_the_queue_is_opensmtpds() {
    let Some((theirs, mine)) = both_probed(&Scenario {
        what: "smtpctl queue",
        conf: "table aliases { postmaster = root, \
               later = \"|/bin/sh -c 'echo busy >&2; exit 75'\" }\n\
               listen on lo\n\
               action \"local\" mbox alias <aliases>\n\
               match from local for local action \"local\"\n",
        script: "EHLO c.example\n\
                 MAIL FROM:<nobody@localhost>\n\
                 RCPT TO:<later@localhost>\n\
                 DATA\n\
                 <DATA>\n\
                 QUIT\n",
        quiet: 3,
        commands: "show queue;show envelope EVPID;show message MSGID;pause envelope all;\
                   show queue;resume envelope all;show queue;remove all;show queue;\
                   schedule all;show stats",
        ..Default::default()
    }) else {
        return;
    };
    let their_ctl = ctl_seen(&theirs.talk);
    assert!(
        their_ctl.contains("|mda|suspend|nobody@localhost|later@localhost|")
            && their_ctl.contains("== ctl remove all\n1 envelope removed\n")
            && their_ctl.contains("\nerrorline: \"busy\"\n")
            && their_ctl.contains("\nesc-class: 4\nesc-code: 30\n")
            && their_ctl.contains("== ctl show message MSGID\nReceived: from c.example ")
            && their_ctl.contains("\nscheduler.envelope.removed=1\n"),
        "{their_ctl}"
    );
    assert_eq!(ctl_seen(&mine.talk), their_ctl);
    let (mut theirs, mut mine) = (theirs, mine);
    for p in [&mut theirs, &mut mine] {
        without_ctl(p);
    }
    without_their_own_mbox(&mut theirs);
    assert_same(&theirs, &mine);
}

/// A filter program that records every line its MTA sends it in `/var/mail/filter.log`,
/// registers for every `smtp-in` and `smtp-out` report and for a filter at each phase,
/// and hands every
/// data line back (`body line` in capitals); it refuses senders `spam@…`, ends the
/// session at recipients `bye@…`, marks recipients `junk@…` as junk, and lets the rest
/// through.
const RECORDING_FILTER: &str = r#"#!/usr/bin/env python3
import sys
log = open("/var/mail/filter.log", "a", buffering=1)
def out(s):
    sys.stdout.write(s + "\n")
    sys.stdout.flush()
for line in sys.stdin:
    line = line.rstrip("\n")
    log.write(line + "\n")
    if line == "config|ready":
        out("register|report|smtp-in|*")
        out("register|report|smtp-out|*")
        for p in ("connect", "helo", "ehlo", "mail-from", "rcpt-to", "data", "data-line", "commit"):
            out("register|filter|smtp-in|" + p)
        out("register|ready")
        continue
    f = line.split("|")
    if f[0] == "filter" and len(f) >= 7:
        phase, sid, token, arg = f[4], f[5], f[6], "|".join(f[7:])
        if phase == "data-line":
            out("filter-dataline|%s|%s|%s" % (sid, token, arg.replace("body line", "BODY LINE")))
        elif phase == "mail-from" and arg.startswith("spam@"):
            out("filter-result|%s|%s|reject|550 5.7.1 no spam here" % (sid, token))
        elif phase == "rcpt-to" and arg.startswith("bye@"):
            out("filter-result|%s|%s|disconnect|421 4.7.0 closing" % (sid, token))
        elif phase == "rcpt-to" and arg.startswith("junk@"):
            out("filter-result|%s|%s|junk" % (sid, token))
        else:
            out("filter-result|%s|%s|proceed" % (sid, token))
"#;

/// The filter protocol, measured against 6.8: a filter program registered for every
/// `smtp-in` report and a filter at each phase sees the same lines from both (the
/// configuration it is sent, the reports, the filter requests and the message's lines),
/// and its decisions (reject, disconnect, junk, changed data lines) give the same
/// dialogue, log lines and mailbox.
#[test]
fn filter_programs_see_what_opensmtpd_sends_them() {
    let files = readable_tempdir();
    let program = files.path().join("recording-filter");
    std::fs::write(&program, RECORDING_FILTER).unwrap();
    std::fs::set_permissions(
        &program,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let Some((theirs, mine)) = both_probed(&Scenario {
        what: "filter program",
        conf: &format!(
            "table aliases {{ postmaster = root }}\n\
             filter \"rec\" proc-exec \"{}\"\n\
             listen on lo filter \"rec\"\n\
             action \"local\" mbox alias <aliases>\n\
             match from local for local action \"local\"\n",
            program.display()
        ),
        script: "EHLO c.example\n\
                 MAIL FROM:<spam@client.example>\n\
                 MAIL FROM:<x@client.example>\n\
                 RCPT TO:<nobody@localhost>\n\
                 DATA\n\
                 <DATA>\n\
                 MAIL FROM:<x@client.example>\n\
                 RCPT TO:<junk@localhost>\n\
                 RCPT TO:<nobody@localhost>\n\
                 DATA\n\
                 <DATA>\n\
                 QUIT\n\
                 \n\
                 EHLO c.example\n\
                 MAIL FROM:<x@client.example>\n\
                 RCPT TO:<bye@localhost>\n",
        quiet: 3,
        ..Default::default()
    }) else {
        return;
    };
    assert!(
        theirs.talk.contains("S: 550 5.7.1 no spam here\n")
            && theirs.talk.contains("S: 421 4.7.0 closing\n")
            && theirs.mail.contains("\nBODY LINE\n")
            && theirs.mail.contains("\nX-Spam: Yes\n"),
        "{}{}",
        theirs.talk,
        theirs.mail
    );
    assert!(
        theirs.mail.contains("\nconfig|ready\n")
            && theirs.mail.contains("|smtp-in|link-connect|")
            && theirs.mail.contains("|smtp-in|commit|")
            && theirs.mail.contains("|smtp-in|tx-commit|"),
        "{}",
        theirs.mail
    );
    // When each line was sent and the client's port are the run's own; smtpd offers
    // PIPELINING, 6.8 does not (compatibility.md §3.2), and says so in its report. The
    // reports and the filter requests are two streams, each compared in its order: how
    // they interleave depends on timing (in 6.8, the reply to DATA is reported before or
    // after the message's lines are sent to the filter, from run to run). Their
    // `link-disconnect` reports are counted, not placed: the next session's `link-connect`
    // may come before the last one's `link-disconnect`, by chance.
    let (mut theirs, mut mine) = (theirs, mine);
    let stamp = regex::Regex::new(r"\|\d{10}\.\d{6}\|").unwrap();
    let port = regex::Regex::new(r"\|127\.0\.0\.1:\d+\|").unwrap();
    for p in [&mut theirs, &mut mine] {
        let text = stamp.replace_all(&p.mail, "|TIME|");
        let text = port.replace_all(&text, "|127.0.0.1:PORT|");
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| !l.ends_with("|smtp-in|protocol-server|ID|250-PIPELINING"))
            .collect();
        let (reports, rest): (Vec<&str>, Vec<&str>) =
            lines.into_iter().partition(|l| l.starts_with("report|"));
        let (ends, reports): (Vec<&str>, Vec<&str>) = reports
            .into_iter()
            .partition(|l| l.ends_with("|smtp-in|link-disconnect|ID"));
        let ends = format!("{} link-disconnect reports\n", ends.len());
        p.mail = rest
            .into_iter()
            .chain(reports)
            .map(|l| format!("{l}\n"))
            .chain(std::iter::once(ends))
            .collect();
    }
    assert_same(&theirs, &mine);
}

/// Writes [`RECORDING_FILTER`] into a directory of its own (kept as long as the returned
/// handle) and gives its path.
fn recording_filter() -> (tempfile::TempDir, PathBuf) {
    let files = readable_tempdir();
    let program = files.path().join("recording-filter");
    std::fs::write(&program, RECORDING_FILTER).unwrap();
    std::fs::set_permissions(
        &program,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    (files, program)
}

/// `smtp-out` reports, measured against 6.8: a filter program on a relay action sees the
/// same lines from both (its `config|subsystem|smtp-out`, and the reports) for a message
/// whose one recipient the next hop refuses, and for the failure report relayed back on
/// the same session; what the next hop is sent and the log lines are the same too. (One
/// recipient: 6.8 sends a message's recipients in the random order of its envelope ids.)
#[test]
fn smtp_out_reports_are_opensmtpds() {
    let (_files, program) = recording_filter();
    let Some((theirs, mine)) = both_probed(&Scenario {
        what: "smtp-out reports",
        conf: &format!(
            "table aliases {{ postmaster = root }}\n\
             filter \"rec\" proc-exec \"{}\"\n\
             listen on lo\n\
             action \"local\" mbox alias <aliases>\n\
             action \"out\" relay host smtp://127.0.0.2:2525 filter \"rec\"\n\
             match from local for local action \"local\"\n\
             match from local for any action \"out\"\n",
            program.display()
        ),
        script: "EHLO c.example\n\
                 MAIL FROM:<x@client.example>\n\
                 RCPT TO:<perm@far.example>\n\
                 DATA\n\
                 <DATA>\n\
                 QUIT\n",
        sink: Some("127.0.0.2:2525"),
        quiet: 3,
        ..Default::default()
    }) else {
        return;
    };
    assert!(
        theirs
            .mail
            .contains("\nconfig|subsystem|smtp-out\nconfig|admd|")
            && theirs
                .mail
                .contains("|smtp-out|protocol-server|ID|550 5.1.1 no such user\n")
            && theirs.mail.contains("|smtp-out|protocol-client|ID|.\n")
            && theirs.mail.contains("|smtp-out|tx-commit|ID|MSGID|"),
        "{}",
        theirs.mail
    );
    // When each line was sent and the client's port are the run's own; the failure
    // report's size depends on its random MIME boundary, and its copy of the message
    // differs by the leading dot 6.8 drops (compatibility.md, OpenSMTPD's bugs).
    let (mut theirs, mut mine) = (theirs, mine);
    let stamp = regex::Regex::new(r"\|\d{10}\.\d{6}\|").unwrap();
    let port = regex::Regex::new(r"\|127\.0\.0\.1:\d+\|").unwrap();
    let size = regex::Regex::new(r"(\|tx-commit\|ID\|MSGID\|)\d+").unwrap();
    let log_size = regex::Regex::new(r"size=\d+ (nrcpt=1 proto=ESMTP)").unwrap();
    for p in [&mut theirs, &mut mine] {
        let text = stamp.replace_all(&p.mail, "|TIME|");
        let text = port.replace_all(&text, "|127.0.0.1:PORT|");
        p.mail = size.replace_all(&text, "${1}N").into_owned();
        p.talk = sink_seen(&p.talk);
        p.log = log_size.replace_all(&p.log, "size=N $1").into_owned();
    }
    theirs.talk = theirs
        .talk
        .replace("\nD: leading dot\n", "\nD: ..leading dot\n");
    assert_same(&theirs, &mine);
}

/// Relaying by MX, measured against 6.8, with a DNS server in the namespace: a domain whose
/// preferred MX is dead and whose second takes the mail, then (7 s later, past the pause
/// between sessions on a route) a domain without MX (its address is used), and a domain
/// that does not exist, whose failure report goes to a sender domain with an unreachable
/// address. The dialogue, what the next hop is sent, the log lines and what smtpctl says
/// of the queue and the domains must be the same.
#[test]
fn mx_relaying_is_opensmtpds() {
    let Some((theirs, mine)) = both_probed(&Scenario {
        what: "mx",
        conf: "table aliases { postmaster = root }\n\
               listen on lo\n\
               action \"local\" mbox alias <aliases>\n\
               action \"out\" relay\n\
               match from local for local action \"local\"\n\
               match from local for any action \"out\"\n",
        script: "EHLO c.example\n\
                 MAIL FROM:<x@client.example>\n\
                 RCPT TO:<alice@far.example>\n\
                 DATA\n\
                 <DATA>\n\
                 <SLEEP:7>\n\
                 MAIL FROM:<x@client.example>\n\
                 RCPT TO:<bob@nomx.example>\n\
                 DATA\n\
                 <DATA>\n\
                 MAIL FROM:<x@client.example>\n\
                 RCPT TO:<carol@nxdomain.example>\n\
                 DATA\n\
                 <DATA>\n\
                 QUIT\n",
        sink: Some("127.0.0.2:25"),
        // 6.8 reports the failure report's envelope about 11 s after its route failed, and
        // enables routes again 15 s after: its log may be still for more than 5 s.
        quiet: 12,
        commands: "show queue;show hoststats",
        dns: "far.example MX 10 mx1.far.example\n\
              far.example MX 20 mx2.far.example\n\
              mx1.far.example A 127.0.0.3\n\
              mx2.far.example A 127.0.0.2\n\
              nomx.example A 127.0.0.2\n\
              3.0.0.127.in-addr.arpa PTR mx1.far.example\n\
              2.0.0.127.in-addr.arpa PTR mx2.far.example\n\
              1.0.0.127.in-addr.arpa PTR localhost\n\
              client.example A 192.0.2.1\n",
        ..Default::default()
    }) else {
        return;
    };
    let their_sink = sink_seen(&theirs.talk);
    assert!(
        their_sink.contains("C: RCPT TO:<alice@far.example>\n")
            && their_sink.contains("C: RCPT TO:<bob@nomx.example>\n"),
        "{their_sink}"
    );
    assert!(
        theirs.log.contains(" host=mx1.far.example\n")
            && theirs
                .log
                .contains(" relay=\"127.0.0.2 (mx2.far.example)\" ")
            && theirs
                .log
                .contains("smtp-out: Failed to resolve MX for [relay:nxdomain.example,smtp]: Domain does not exist\n"),
        "{}",
        theirs.log
    );
    assert_eq!(sink_seen(&mine.talk), their_sink);
    assert_eq!(ctl_seen(&mine.talk), ctl_seen(&theirs.talk));
    let (mut theirs, mut mine) = (theirs, mine);
    // The failure report's size depends on its random MIME boundary.
    let size = regex::Regex::new(r"size=\d+ (nrcpt=1 proto=ESMTP)").unwrap();
    for p in [&mut theirs, &mut mine] {
        without_sink_and_ctl(p);
        p.log = size.replace_all(&p.log, "size=N $1").into_owned();
    }
    assert_same(&theirs, &mine);
}

/// Reverse DNS and FCrDNS, measured against 6.8 with a DNS server in the namespace and
/// clients connecting from other loopback addresses: a PTR whose name points back, one
/// whose name has no address (NODATA), one whose name points elsewhere, one whose name
/// does not exist, one whose address lookup fails (SERVFAIL), no PTR, and a failing PTR
/// lookup. Connect filters junk on `!rdns` and `!fcrdns`, a mail-from filter refuses by
/// `rdns <table>`, and the rules route by `from rdns`, `from rdns regex` and their
/// negations (`!from rdns regex <t>` is false without a reverse name). The dialogues, the
/// log lines (`host=`, no warning for the failed lookups) and the maildirs (`Received:`
/// lines, junk folders) must be the same. (`from rdns <t>` is left out: 6.8 compares the
/// name as a network address and never matches, compatibility.md.)
#[test]
fn reverse_dns_filters_and_rules_are_opensmtpds() {
    // The RCPT a rule may refuse comes first: 6.8's `Received: … for <RCPT>` names the last
    // RCPT attempted, refused or not (compatibility.md), smtpd the recipient accepted.
    let transaction = "EHLO c.example\n\
                       MAIL FROM:<x@client.example>\n\
                       RCPT TO:<nobody@neg.example>\n\
                       RCPT TO:<nobody@localhost>\n\
                       DATA\n\
                       <DATA>\n\
                       QUIT\n";
    let script = ["1", "3", "4", "5", "7", "8", "10"]
        .map(|host| format!("<FROM:127.0.0.{host}>\n{transaction}"))
        .join("\n")
        // Refused at MAIL FROM: nothing more is sent (6.8 offers no PIPELINING).
        + "\n<FROM:127.0.0.6>\nEHLO c.example\nMAIL FROM:<x@client.example>\nQUIT\n";
    let Some((theirs, mine)) = both_probed(&Scenario {
        what: "rdns",
        conf: "table goodre { \"\\.good\\.example$\" }\n\
               table liars { \"liar.example\" }\n\
               table norevre { \"^norev\\.\" }\n\
               filter check_rdns phase connect match !rdns junk\n\
               filter check_fcrdns phase connect match !fcrdns junk\n\
               filter liar phase mail-from match rdns <liars> reject \"550 5.7.1 liar\"\n\
               filter check chain { check_rdns, check_fcrdns, liar }\n\
               listen on lo filter check\n\
               action \"good\" maildir \"/var/mail/good-%{user.username}\" junk\n\
               action \"norev\" maildir \"/var/mail/norev-%{user.username}\" junk\n\
               action \"neg\" maildir \"/var/mail/neg-%{user.username}\" junk\n\
               action \"nordns\" maildir \"/var/mail/nordns-%{user.username}\" junk\n\
               action \"rdns\" maildir \"/var/mail/rdns-%{user.username}\" junk\n\
               match from rdns regex <goodre> for local action \"good\"\n\
               match from rdns regex <norevre> for local action \"norev\"\n\
               match !from rdns regex <goodre> for domain \"neg.example\" action \"neg\"\n\
               match !from rdns for local action \"nordns\"\n\
               match from rdns for local action \"rdns\"\n",
        script: &script,
        quiet: 2,
        dns: "1.0.0.127.in-addr.arpa PTR localhost\n\
              4.0.0.127.in-addr.arpa PTR norev.example\n\
              norev.example MX 10 mx.good.example\n\
              5.0.0.127.in-addr.arpa PTR mx.good.example\n\
              mx.good.example A 127.0.0.5\n\
              6.0.0.127.in-addr.arpa PTR liar.example\n\
              liar.example A 127.0.0.99\n\
              7.0.0.127.in-addr.arpa SERVFAIL -\n\
              8.0.0.127.in-addr.arpa PTR gone.example\n\
              10.0.0.127.in-addr.arpa PTR flaky.example\n\
              flaky.example SERVFAIL -\n",
        ..Default::default()
    }) else {
        return;
    };
    assert!(
        theirs.log.contains(" address=127.0.0.3 host=<unknown>\n")
            && theirs
                .log
                .contains(" address=127.0.0.5 host=mx.good.example\n")
            && theirs.log.contains(" result=\"550 5.7.1 liar\"\n"),
        "{}",
        theirs.log
    );
    assert!(
        theirs.mail.contains("--- good-nobody/new/MESSAGE\n")
            && theirs.mail.contains("--- norev-nobody/.Junk/new/MESSAGE\n")
            && theirs
                .mail
                .contains("--- nordns-nobody/.Junk/new/MESSAGE\n"),
        "{}",
        theirs.mail
    );
    assert_same(&theirs, &mine);
}

/// The relay action's options, measured against 6.8 with a DNS server in the namespace:
/// `backup mx NAME` (only the MX hosts preferred to NAME), `backup` where this host is the
/// best MX, `host` with `smtp+notls://`, `helo` and `mail-from`, and `domain <mapping>`
/// with `src` and `helo-src` for a mapped and an unmapped domain. The dialogue, what the
/// next hop is sent (and from which address), the log lines, the `-T mta` trace lines of
/// each session, `show queue` and `show stats` (the `mta.*` gauges among them) must be the
/// same.
#[test]
fn relay_options_are_opensmtpds() {
    let transactions: String = ["far", "self", "smart", "routed", "unmapped"]
        .map(|domain| {
            format!(
                "MAIL FROM:<x@client.example>\n\
                 RCPT TO:<user@{domain}.example>\n\
                 DATA\n\
                 <DATA>\n"
            )
        })
        .concat();
    let script = format!("EHLO c.example\n{transactions}QUIT\n");
    let Some((theirs, mine)) = both_probed(&Scenario {
        what: "relay options",
        conf: "table aliases { postmaster = root }\n\
               table routes { \"routed.example\" = \"127.0.0.2\" }\n\
               table helos { \"127.0.0.9\" = \"nine.example\" }\n\
               listen on lo\n\
               action \"local\" mbox alias <aliases>\n\
               action \"backup\" relay backup mx \"mx2.far.example\"\n\
               action \"selfbackup\" relay backup\n\
               action \"smarthost\" relay host \"smtp+notls://127.0.0.2:25\" helo \"relay.example\" mail-from \"@rewritten.example\"\n\
               action \"bydomain\" relay domain <routes> src 127.0.0.9 helo-src <helos>\n\
               match from local for local action \"local\"\n\
               match from local for domain \"far.example\" action \"backup\"\n\
               match from local for domain \"self.example\" action \"selfbackup\"\n\
               match from local for domain \"smart.example\" action \"smarthost\"\n\
               match from local for domain { \"routed.example\", \"unmapped.example\" } action \"bydomain\"\n",
        script: &script,
        sink: Some("127.0.0.2:25"),
        // The session to the smarthost opens about 5 s after the others, in 6.8 as in
        // smtpd; the log may be still meanwhile.
        quiet: 8,
        flags: &["-T", "mta"],
        commands: "show queue;show stats",
        dns: "far.example MX 10 mx1.far.example\n\
              far.example MX 20 mx2.far.example\n\
              far.example MX 30 mx3.far.example\n\
              mx1.far.example A 127.0.0.2\n\
              mx2.far.example A 127.0.0.1\n\
              mx3.far.example A 127.0.0.4\n\
              self.example MX 10 vm\n\
              smart.example A 127.0.0.66\n\
              routed.example A 127.0.0.66\n\
              unmapped.example A 127.0.0.66\n\
              2.0.0.127.in-addr.arpa PTR mx1.far.example\n\
              1.0.0.127.in-addr.arpa PTR localhost\n",
        ..Default::default()
    }) else {
        return;
    };
    let their_sink = sink_seen(&theirs.talk);
    assert!(
        their_sink.contains("C: RCPT TO:<user@far.example>\n"),
        "{their_sink}"
    );
    assert_eq!(sink_seen(&mine.talk), their_sink);
    assert_eq!(ctl_seen(&mine.talk), ctl_seen(&theirs.talk));
    let their_traces = mta_traces(&theirs.log);
    assert!(
        their_traces.len() == 3
            && their_traces.iter().any(|t| {
                t.contains("\n>>> [...309 bytes...]\nMTA_BODY -> MTA_BODY\nend-of-file\n")
            }),
        "{their_traces:#?}"
    );
    assert_eq!(mta_traces(&mine.log), their_traces);
    let (mut theirs, mut mine) = (theirs, mine);
    for p in [&mut theirs, &mut mine] {
        without_sink_and_ctl(p);
        without_log_lines(p, &["mta: "]);
    }
    assert_same(&theirs, &mine);
}

/// The `-T mta` lines of each outbound session, its name (6.8: a pointer) left out, the
/// sessions sorted (they run side by side). Left out too: `MTA_READY -> MTA_READY`, which
/// 6.8 traces each time an idle session looks for more mail (how often depends on
/// timing).
fn mta_traces(log: &str) -> Vec<String> {
    let mut sessions: Vec<(String, String)> = Vec::new();
    for line in log.lines() {
        let Some((session, rest)) = line.strip_prefix("mta: ").and_then(|l| l.split_once(": "))
        else {
            continue;
        };
        if rest == "MTA_READY -> MTA_READY" {
            continue;
        }
        let rest = normalized(rest) + "\n";
        match sessions.iter_mut().find(|(s, _)| s == session) {
            Some((_, text)) => text.push_str(&rest),
            None => sessions.push((session.to_string(), rest)),
        }
    }
    let mut texts: Vec<String> = sessions.into_iter().map(|(_, t)| t).collect();
    texts.sort();
    texts
}

/// Listener options and match criteria, measured against 6.8: a listener with `hostname`,
/// `tag`, `mask-src` and `no-dsn`, one with `hostnames <mapping>` and another tag, and
/// rules by `tag`, `tag regex`, `helo`, `mail-from regex` and a `reject` by `rcpt-to
/// regex`. The banners and EHLO replies, DSN parameters where DSN is not offered, where
/// each message goes, its `Received:` and added `Message-ID:` lines, and the log lines
/// must be the same. (The refused RCPT comes first: 6.8's `Received: … for` names the last
/// RCPT sent, compatibility.md.)
#[test]
fn listener_options_and_match_criteria_are_opensmtpds() {
    let Some((theirs, mine)) = both_probed(&Scenario {
        what: "listeners",
        conf: "table aliases { postmaster = root }\n\
               table names { \"127.0.0.1\" = \"named.example\" }\n\
               listen on lo\n\
               listen on lo port 2525 hostname \"mx.example\" tag TAGGED mask-src no-dsn\n\
               listen on lo port 2526 hostnames <names> tag OTHER\n\
               action \"local\" mbox alias <aliases>\n\
               action \"a-tag\" maildir \"/var/mail/tag-%{user.username}\"\n\
               action \"a-helo\" maildir \"/var/mail/helo-%{user.username}\"\n\
               action \"a-from\" maildir \"/var/mail/from-%{user.username}\"\n\
               action \"a-other\" maildir \"/var/mail/other-%{user.username}\"\n\
               match tag TAGGED for local action \"a-tag\"\n\
               match helo \"special.example\" for local action \"a-helo\"\n\
               match mail-from regex \"^vip@\" for local action \"a-from\"\n\
               match from local rcpt-to regex \"^reject-me@\" reject\n\
               match tag regex \"^OTH\" for local action \"a-other\"\n\
               match from local for local action \"local\"\n",
        script: "<TO:127.0.0.1:2525>\n\
                 EHLO c.example\n\
                 MAIL FROM:<x@client.example> RET=HDRS\n\
                 MAIL FROM:<x@client.example>\n\
                 RCPT TO:<nobody@localhost> NOTIFY=NEVER\n\
                 RCPT TO:<nobody@localhost>\n\
                 DATA\n\
                 <DATA>\n\
                 QUIT\n\
                 \n\
                 <TO:127.0.0.1:2526>\n\
                 EHLO c.example\n\
                 MAIL FROM:<x@client.example>\n\
                 RCPT TO:<nobody@localhost>\n\
                 DATA\n\
                 <DATA>\n\
                 QUIT\n\
                 \n\
                 HELO special.example\n\
                 MAIL FROM:<x@client.example>\n\
                 RCPT TO:<reject-me@localhost>\n\
                 RCPT TO:<nobody@localhost>\n\
                 DATA\n\
                 <DATA>\n\
                 RSET\n\
                 EHLO c.example\n\
                 MAIL FROM:<vip@client.example>\n\
                 RCPT TO:<nobody@localhost>\n\
                 DATA\n\
                 <DATA>\n\
                 MAIL FROM:<x@client.example>\n\
                 RCPT TO:<nobody@localhost>\n\
                 DATA\n\
                 <DATA>\n\
                 QUIT\n",
        quiet: 2,
        ..Default::default()
    }) else {
        return;
    };
    assert!(
        theirs.talk.contains("S: 220 mx.example ESMTP OpenSMTPD\n")
            && theirs.mail.contains("--- tag-nobody/new/MESSAGE\n"),
        "{}\n{}",
        theirs.talk,
        theirs.mail
    );
    assert_same(&theirs, &mine);
}

/// Delay notices, measured against 6.8: a local delivery that asks to be tried again
/// (`exit 75`) with `bounce warn-interval 5s, 15s`. The first failure (next try in 10 s,
/// past 5 s) sends the first notice, the retry 10 s later (next try at 40 s, past 15 s) the
/// second. The log lines (both attempts), the notices in the sender's mbox (their MIME
/// boundaries aside) and `show queue` must be the same.
#[test]
fn delay_notices_are_opensmtpds() {
    let Some((theirs, mine)) = both_probed(&Scenario {
        what: "delay notices",
        conf: "table aliases { postmaster = root, \
               later = \"|/bin/sh -c 'echo busy >&2; exit 75'\" }\n\
               bounce warn-interval 5s, 15s\n\
               listen on lo\n\
               action \"local\" mbox alias <aliases>\n\
               match from local for local action \"local\"\n",
        script: "EHLO c.example\n\
                 MAIL FROM:<nobody@localhost>\n\
                 RCPT TO:<later@localhost>\n\
                 DATA\n\
                 <DATA>\n\
                 QUIT\n\
                 \n\
                 <SLEEP:13>\n\
                 QUIT\n",
        quiet: 3,
        commands: "show queue",
        ..Default::default()
    }) else {
        return;
    };
    let their_ctl = ctl_seen(&theirs.talk);
    assert!(
        their_ctl.contains("|nobody@localhost|later@localhost|later@localhost|TIME|TIME|LASTTRY|2|pending|N|\"busy\"\n"),
        "{their_ctl}"
    );
    assert_eq!(ctl_seen(&mine.talk), their_ctl);
    assert!(
        theirs
            .mail
            .matches("Subject: Delivery status notification: delayed\n")
            .count()
            == 2,
        "{}",
        theirs.mail
    );
    assert_same_apart_from_ctl_and_reports(theirs, mine);
}

/// Local submission with sendmail, measured against 6.8 (its sendmail is its smtpctl):
/// `-t` with local names in `To:` and `Cc:`, explicit recipients with `-f` and `-F`, and a
/// message with its own `Date:` and `Message-ID:`. The submissions' exit status and output,
/// the log lines (the local sessions) and the mailboxes (`Received:`, added and qualified
/// headers) must be the same.
#[test]
fn sendmail_submissions_are_opensmtpds() {
    let Some((theirs, mine)) = both_probed(&Scenario {
        what: "sendmail",
        conf: &format!("{LOCAL_HEAD}match from local for local action \"local\"\n"),
        script: "<SENDMAIL:cron -t>\n\
                 \n\
                 <SENDMAIL:plain -f someone@client.example -F Some_One nobody backup@localhost>\n\
                 \n\
                 <SENDMAIL:dated nobody>\n",
        quiet: 3,
        ..Default::default()
    }) else {
        return;
    };
    assert!(
        theirs.log.matches(" smtp connected address=local ").count() == 3,
        "{}",
        theirs.log
    );
    assert_same(&theirs, &mine);
}

/// The `-T rules`, `-T expand` and `-T lookup` trace lines, measured against 6.8 on
/// aliases, a virtual table with a catch-all and a user: the lines for each recipient
/// must be the same.
#[test]
fn expansion_traces_are_opensmtpds() {
    let Some((theirs, mine)) = both_probed(&Scenario {
        what: "traces",
        conf: "table aliases { postmaster = root, list = \"nobody, root\", nested = list, \
               err = \"error:550 5.1.1 list closed\" }\n\
               table virt { \"list@virt.example\" = \"nobody, root\", \"@virt.example\" = nobody }\n\
               table domains { \"virt.example\" }\n\
               listen on lo\n\
               action \"local\" mbox alias <aliases>\n\
               action \"virt\" mbox virtual <virt>\n\
               match from local for domain <domains> action \"virt\"\n\
               match from local for local action \"local\"\n",
        script: "EHLO c.example\n\
                 MAIL FROM:<x@client.example>\n\
                 RCPT TO:<nested@localhost>\n\
                 RCPT TO:<err@localhost>\n\
                 RCPT TO:<nobody@localhost>\n\
                 RCPT TO:<list@virt.example>\n\
                 RCPT TO:<anyone@virt.example>\n\
                 RCPT TO:<x@elsewhere.example>\n\
                 QUIT\n",
        quiet: 2,
        flags: &["-T", "rules", "-T", "expand", "-T", "lookup"],
        ..Default::default()
    }) else {
        return;
    };
    // In their order; the addresses of the expansion's objects are the machine's.
    let pointer = regex::Regex::new(r"0x[0-9a-f]+").unwrap();
    let traces = |log: &str| -> Vec<String> {
        log.lines()
            .filter(|l| {
                ["expand: ", "lookup: ", "rule #", "no rule matched"]
                    .iter()
                    .any(|p| l.starts_with(p))
            })
            .map(|l| pointer.replace_all(l, "0xPTR").into_owned())
            .collect()
    };
    let their_traces = traces(&theirs.log);
    assert!(
        their_traces.len() > 100
            && their_traces.contains(
                &"lookup: match \"localhost\" as DOMAIN in table static:<localnames> -> true"
                    .to_string()
            ),
        "{their_traces:#?}"
    );
    assert_eq!(traces(&mine.log), their_traces);
    let (mut theirs, mut mine) = (theirs, mine);
    for p in [&mut theirs, &mut mine] {
        p.log = pointer.replace_all(&p.log, "0xPTR").into_owned();
    }
    assert_same(&theirs, &mine);
}

/// The `-T smtp` and `-T filters` trace lines, measured against 6.8 on a listener with a
/// filter: the session's state changes, every line read and written, the message's lines
/// as the filters hand them back (smtpd's own header lines first, leading dots still
/// doubled, the final dot) and each filter decision, in order. Set aside: the session is
/// named by its id where 6.8 prints a pointer (and the listener by its position),
/// `250-PIPELINING`, `data-begin fd=` (smtpd passes no descriptor), where 6.8's `filters
/// data-end` falls (another process logs it, before or after the 250), and where the `smtp
/// connected` line falls (smtpd's banner does not wait for the reverse lookup when no
/// connect-phase filter needs it; compatibility.md §3.11).
#[test]
fn smtp_and_filter_traces_are_opensmtpds() {
    let Some((theirs, mine)) = both_probed(&Scenario {
        what: "smtp traces",
        conf: "table aliases { postmaster = root }\n\
         filter \"from-junk\" phase mail-from match mail-from regex \"^junk@\" junk\n\
         listen on lo filter \"from-junk\"\n\
         action \"local\" mbox alias <aliases>\n\
         match from local for local action \"local\"\n",
        script: "EHLO c.example\n\
                 MAIL FROM:<junk@client.example>\n\
                 RCPT TO:<nobody@localhost>\n\
                 DATA\n\
                 <DATA>\n\
                 NOOP\n\
                 RSET\n\
                 QUIT\n",
        quiet: 2,
        flags: &["-T", "smtp", "-T", "filters"],
        ..Default::default()
    }) else {
        return;
    };
    let rules = [
        (r"^smtp: (0x[0-9a-f]+|[0-9a-f]{16}):", "smtp: SID:"),
        (r"^[0-9a-f]{16} filters ", "SID filters "),
        (r"listener 0x[0-9a-f]+", "listener L"),
        (r"fd=-?\d+", "fd=N"),
    ]
    .map(|(p, with)| (regex::Regex::new(p).unwrap(), with));
    let traces = |log: &str| -> Vec<String> {
        log.lines()
            .filter(|l| {
                (l.starts_with("smtp: ") || l.starts_with("<<< ") || l.contains(" filters "))
                    && !l.ends_with(": >>> 250-PIPELINING")
                    // 6.8 logs it from another process: before or after the 250, by chance.
                    && !l.ends_with(" filters data-end")
            })
            .map(|l| {
                let l = rules.iter().fold(l.to_string(), |l, (re, with)| {
                    re.replace(&l, *with).into_owned()
                });
                normalized(&l)
            })
            .collect()
    };
    let their_traces = traces(&theirs.log);
    assert!(
        their_traces.contains(&"<<< [MSG] X-Spam: Yes".to_string())
            && their_traces.contains(&"<<< [MSG] ..leading dot".to_string())
            && their_traces.len() > 60,
        "{their_traces:#?}"
    );
    assert_eq!(traces(&mine.log), their_traces);
    let (mut theirs, mut mine) = (theirs, mine);
    for p in [&mut theirs, &mut mine] {
        p.log = p
            .log
            .lines()
            .filter(|l| !l.ends_with(": >>> 250-PIPELINING"))
            .map(|l| {
                rules.iter().fold(l.to_string(), |l, (re, with)| {
                    re.replace(&l, *with).into_owned()
                }) + "\n"
            })
            .collect();
    }
    assert_same(&theirs, &mine);
}

/// SRS, measured against 6.8 with the same key: mail to an alias that forwards to a
/// remote address, relayed by an action with `srs`, leaves with the sender rewritten
/// (`SRS0=HASH=TT=client.example=x@…`), a sender already rewritten once gets `SRS1=`, and
/// mail that is not forwarded keeps its sender, and a bounce to an SRS0 address with a
/// wrong hash is refused (`SRS failed to decode`, the address then used as it is). What
/// the next hop is sent and the log lines must be the same. (A bounce to a valid SRS
/// address is left out: 6.8 decodes it but routes the address it was sent to, and refuses
/// it, compatibility.md; smtpd delivers it to the decoded sender, as OpenSMTPD HEAD does.
/// 6.8's warning ends in whatever errno text was left over, which smtpd does not print.)
#[test]
fn srs_senders_are_opensmtpds() {
    let keys = smtpd::srs::SrsKeys {
        key: "not-so-secret".into(),
        backup: None,
        ttl_days: 4,
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // The address the forward gets today, from smtpd's own encoder: 6.8 must send it too.
    let srs0 = smtpd::srs::encode(&keys, "x@client.example", "localhost", now);
    let forged = "SRS0=AAAA=AA=client.example=x@localhost";
    let script = format!(
        "EHLO c.example\n\
         MAIL FROM:<x@client.example>\n\
         RCPT TO:<fwd@localhost>\n\
         DATA\n\
         <DATA>\n\
         MAIL FROM:<SRS0=abcd=AB=origin.example=y@client.example>\n\
         RCPT TO:<fwd@localhost>\n\
         DATA\n\
         <DATA>\n\
         MAIL FROM:<x@client.example>\n\
         RCPT TO:<direct@far.example>\n\
         DATA\n\
         <DATA>\n\
         MAIL FROM:<>\n\
         RCPT TO:<{forged}>\n\
         QUIT\n"
    );
    let Some((theirs, mine)) = both_probed(&Scenario {
        what: "srs",
        conf: "srs key \"not-so-secret\"\n\
               table aliases { postmaster = root, fwd = \"user@far.example\" }\n\
               listen on lo\n\
               action \"local\" mbox alias <aliases>\n\
               action \"out\" relay host smtp://127.0.0.2:25 srs\n\
               match from local for local action \"local\"\n\
               match from local for any action \"out\"\n",
        script: &script,
        sink: Some("127.0.0.2:25"),
        quiet: 3,
        ..Default::default()
    }) else {
        return;
    };
    let their_sink = sink_seen(&theirs.talk);
    assert!(
        their_sink.contains(&format!("C: MAIL FROM:<{srs0}>"))
            && their_sink.contains("C: MAIL FROM:<SRS1=")
            && their_sink.contains("C: MAIL FROM:<x@client.example>"),
        "{their_sink}"
    );
    assert_eq!(sink_seen(&mine.talk), their_sink);
    let (mut theirs, mut mine) = (theirs, mine);
    assert!(
        theirs
            .log
            .contains(&format!("SRS failed to decode: {forged}: ")),
        "{}",
        theirs.log
    );
    // 6.8 appends whatever errno text was left over ("Success", "Address family not
    // supported by protocol", ...).
    let errno = regex::Regex::new(r"(?m)^(SRS failed to decode: \S+): .*$").unwrap();
    theirs.log = errno.replace_all(&theirs.log, "$1").into_owned();
    for p in [&mut theirs, &mut mine] {
        without_sink_and_ctl(p);
    }
    assert_same(&theirs, &mine);
}

/// smtpctl's control commands, measured against 6.8: the state of the agents (`show
/// status`) as `pause`/`resume` of `mda`, `mta` and `smtp` change it, pausing twice,
/// `log verbose`/`log brief`, `trace`/`untrace`, `profile`/`unprofile`, `update table` of
/// a file table, and unknown commands and tables. What each prints and its exit status,
/// and the log lines, must be the same.
#[test]
fn smtpctl_control_commands_are_opensmtpds() {
    let files = readable_tempdir();
    let aliases = files.path().join("aliases");
    std::fs::write(&aliases, "postmaster: root\n").unwrap();
    let Some((theirs, mine)) = both_probed(&Scenario {
        what: "smtpctl control",
        conf: &format!(
            "table aliases file:{}\n\
             listen on lo\n\
             action \"local\" mbox alias <aliases>\n\
             match from local for local action \"local\"\n",
            aliases.display()
        ),
        script: "EHLO c.example\nQUIT\n",
        quiet: 2,
        commands: "show status;pause mda;pause mda;pause mta;pause smtp;show status;\
                   resume mda;resume mta;resume smtp;resume smtp;show status;\
                   log verbose;log brief;trace expand;untrace expand;trace nosuch;\
                   profile queue;unprofile queue;update table aliases;update table nosuch;\
                   show nosuch;pause nosuch",
        ..Default::default()
    }) else {
        return;
    };
    let their_ctl = ctl_seen(&theirs.talk);
    assert!(
        their_ctl.contains("== ctl show status\nMDA paused\nMTA paused\nSMTP paused\n"),
        "{their_ctl}"
    );
    assert_eq!(ctl_seen(&mine.talk), their_ctl);
    let (mut theirs, mut mine) = (theirs, mine);
    for p in [&mut theirs, &mut mine] {
        without_ctl(p);
        // While `log verbose` is on, 6.8 logs its processes' own messages
        // (`debug: control -> client: pipe closed`).
        without_log_lines(p, &["debug: "]);
    }
    assert_same(&theirs, &mine);
}

/// Format specifiers of an `mda` command, measured against 6.8: every token (`sender`,
/// `rcpt`, `dest`, `user.*`, `mbox.from`, with their `.user`/`.domain` parts), modifiers
/// (`lowercase`, `uppercase`, `strip`, `raw`), ranges (`[1]`, `[0:2]`, `[-3:]`), `%%`, the
/// escaping of shell characters, a null sender, and a range past the end (the delivery
/// fails for good). Each recipient's command writes its own file. The replies, the log
/// lines and the files must be the same.
#[test]
fn mda_format_specifiers_are_opensmtpds() {
    // No shell quotes in the command: 6.8 hands it to its mail.mda inside double quotes
    // (compatibility.md).
    let fmt = "%{sender},%{sender.user},%{sender.domain},%{mbox.from},%{rcpt},\
               %{rcpt.user:lowercase},%{rcpt.domain:uppercase},%{rcpt.user:strip},\
               %{rcpt.domain[0:2]},%{rcpt.domain[-3:]},%{rcpt.user[1]},%{dest},\
               %{dest.user},%{user.username},%{user.directory},%%,%{rcpt:raw}";
    let Some((theirs, mine)) = both_probed(&Scenario {
        what: "mda format",
        conf: &format!(
            "table aliases {{ postmaster = root, ali = nobody }}\n\
             listen on lo\n\
             action \"fmt\" mda \"echo {fmt} > /var/mail/fmt-%{{rcpt.user}}\" alias <aliases>\n\
             action \"badfmt\" mda \"echo %{{rcpt.user[99]}} > /var/mail/bad\"\n\
             match from local rcpt-to regex \"^nobody\\+bad@\" action \"badfmt\"\n\
             match from local for local action \"fmt\"\n"
        ),
        script: "EHLO c.example\n\
                 MAIL FROM:<Some.One@Client.Example>\n\
                 RCPT TO:<nobody+Tag@localhost>\n\
                 RCPT TO:<nobody+t?g@localhost>\n\
                 RCPT TO:<NoBody@LocalHost>\n\
                 RCPT TO:<ali@localhost>\n\
                 RCPT TO:<nobody+bad@localhost>\n\
                 DATA\n\
                 <DATA>\n\
                 MAIL FROM:<>\n\
                 RCPT TO:<nobody+null@localhost>\n\
                 DATA\n\
                 <DATA>\n\
                 QUIT\n",
        quiet: 3,
        ..Default::default()
    }) else {
        return;
    };
    assert!(
        theirs.mail.contains("--- fmt-nobody+Tag\n"),
        "{}",
        theirs.mail
    );
    let mut theirs = theirs;
    without_their_own_mbox(&mut theirs);
    let mut mine = mine;
    with_reports_normalized(&mut theirs, &mut mine);
    assert_same(&theirs, &mine);
}

/// Local methods and address handling, measured against 6.8: `smtp sub-addr-delim "-"`,
/// a virtual table with a catch-all delivered to maildirs as a `userbase` user,
/// `forward-only` (mail accepted only when an alias sends it elsewhere; else `424 4.2.4`)
/// and `expand-only` (accepted only when an alias sends it elsewhere; else `524 5.2.4`,
/// even for an alias to a local user). The replies, what the next hop is sent, the log
/// lines and the mailboxes must be the same.
#[test]
fn virtual_users_and_expansion_only_methods_are_opensmtpds() {
    let Some((theirs, mine)) = both_probed(&Scenario {
        what: "methods",
        conf: "smtp sub-addr-delim \"-\"\n\
               table aliases { postmaster = root, fwd = \"someone@far.example\", loc = nobody }\n\
               table virt { \"v@virt.example\" = \"vuser\", \"@virt.example\" = \"vuser\" }\n\
               table users { vuser = \"65534:65534:/var/mail/vhome\" }\n\
               listen on lo\n\
               action \"local\" mbox alias <aliases>\n\
               action \"virtual\" maildir \"/var/mail/v-%{user.username}-%{dest.user}\" virtual <virt> userbase <users>\n\
               action \"fwdonly\" forward-only alias <aliases>\n\
               action \"expandonly\" expand-only alias <aliases>\n\
               action \"out\" relay host smtp://127.0.0.2:25\n\
               match from local for domain \"virt.example\" action \"virtual\"\n\
               match from local for domain \"fwd.example\" action \"fwdonly\"\n\
               match from local for domain \"exp.example\" action \"expandonly\"\n\
               match from local for local action \"local\"\n\
               match from local for any action \"out\"\n",
        script: "EHLO c.example\n\
                 MAIL FROM:<x@client.example>\n\
                 RCPT TO:<nobody-tag@localhost>\n\
                 RCPT TO:<v@virt.example>\n\
                 RCPT TO:<other-x@virt.example>\n\
                 RCPT TO:<fwd@fwd.example>\n\
                 RCPT TO:<loc@fwd.example>\n\
                 RCPT TO:<nobody@fwd.example>\n\
                 RCPT TO:<loc@exp.example>\n\
                 RCPT TO:<fwd@exp.example>\n\
                 RCPT TO:<nobody@exp.example>\n\
                 DATA\n\
                 <DATA>\n\
                 QUIT\n",
        sink: Some("127.0.0.2:25"),
        quiet: 3,
        ..Default::default()
    }) else {
        return;
    };
    assert!(
        theirs
            .talk
            .contains("C: RCPT TO:<nobody@fwd.example>\nS: 424 4.2.4 ")
            && theirs
                .talk
                .contains("C: RCPT TO:<loc@exp.example>\nS: 524 5.2.4 "),
        "{}",
        theirs.talk
    );
    assert_eq!(sink_seen(&mine.talk), sink_seen(&theirs.talk));
    let (mut theirs, mut mine) = (theirs, mine);
    for p in [&mut theirs, &mut mine] {
        without_sink_and_ctl(p);
    }
    without_their_own_mbox(&mut theirs);
    assert_same(&theirs, &mine);
}

/// An `mda wrapper`, a tagged enqueue socket with `mask-src`, and `from socket` rules,
/// measured against 6.8: mail to a wrapped `mda` action over SMTP, and sendmail's mail,
/// which the socket's tag routes to a maildir. The replies, the log lines and the
/// mailboxes (the socket's `Received:` line among them) must be the same.
#[test]
fn wrappers_and_the_enqueue_socket_are_opensmtpds() {
    let Some((theirs, mine)) = both_probed(&Scenario {
        what: "wrapper",
        conf: "table aliases { postmaster = root }\n\
               mda wrapper \"wrap\" \"%{mda} > /var/mail/wrapped-%{rcpt.user}\"\n\
               listen on socket tag LOCALSOCK mask-src\n\
               listen on lo\n\
               action \"local\" mbox alias <aliases>\n\
               action \"w\" mda \"cat\" wrapper \"wrap\"\n\
               action \"sock\" maildir \"/var/mail/sock-%{user.username}\"\n\
               match from socket tag LOCALSOCK for local action \"sock\"\n\
               match from local rcpt-to regex \"^nobody\\+w@\" action \"w\"\n\
               match from local for local action \"local\"\n",
        script: "EHLO c.example\n\
                 MAIL FROM:<x@client.example>\n\
                 RCPT TO:<nobody+w@localhost>\n\
                 RCPT TO:<nobody@localhost>\n\
                 DATA\n\
                 <DATA>\n\
                 QUIT\n\
                 \n\
                 <SENDMAIL:plain nobody>\n",
        quiet: 3,
        ..Default::default()
    }) else {
        return;
    };
    assert!(
        theirs.mail.contains("--- wrapped-nobody+w\n")
            && theirs.mail.contains("--- sock-nobody/new/MESSAGE\n"),
        "{}",
        theirs.mail
    );
    let mut theirs = theirs;
    without_their_own_mbox(&mut theirs);
    assert_same(&theirs, &mine);
}

/// Expiry, measured against 6.8: an action with `ttl 12s` whose delivery asks to be tried
/// again (`exit 75`), tried at once and 10 s later, expires at 12 s: `delivery: Expire for
/// … stat=Envelope expired`, a report to the sender, and `show stats` counts it. The log
/// lines, `show queue` (empty) and `show stats` must be the same. The report itself is
/// not compared: 6.8 sends a `delayed` notice with `4.4.7` on expiry, smtpd a `failed`
/// report with `5.4.7`, as OpenSMTPD after 6.8 does (compatibility.md).
#[test]
fn expiry_by_action_ttl_is_opensmtpds() {
    let Some((theirs, mine)) = both_probed(&Scenario {
        what: "expiry",
        conf: "table aliases { postmaster = root, \
               later = \"|/bin/sh -c 'echo busy >&2; exit 75'\" }\n\
               listen on lo\n\
               action \"local\" mbox alias <aliases> ttl 12s\n\
               match from local for local action \"local\"\n",
        script: "EHLO c.example\n\
                 MAIL FROM:<nobody@localhost>\n\
                 RCPT TO:<later@localhost>\n\
                 DATA\n\
                 <DATA>\n\
                 QUIT\n\
                 \n\
                 <SLEEP:15>\n\
                 QUIT\n",
        quiet: 3,
        commands: "show queue;show stats",
        ..Default::default()
    }) else {
        return;
    };
    assert!(
        theirs.log.contains(", delay=12s, stat=Envelope expired\n"),
        "{}",
        theirs.log
    );
    let their_ctl = ctl_seen(&theirs.talk);
    assert!(
        their_ctl.contains("== ctl show queue\n<exit 0>\n")
            && their_ctl.contains("\nscheduler.envelope.expired=1\n"),
        "{their_ctl}"
    );
    assert_eq!(ctl_seen(&mine.talk), their_ctl);
    assert!(
        theirs
            .mail
            .contains("Subject: Delivery status notification: delayed\n")
            && mine
                .mail
                .contains("Subject: Delivery status notification: failed\n"),
        "{}\n{}",
        theirs.mail,
        mine.mail
    );
    let (mut theirs, mut mine) = (theirs, mine);
    for p in [&mut theirs, &mut mine] {
        p.mail.clear();
    }
    assert_same_apart_from_ctl_and_reports(theirs, mine);
}

/// The `-T queue` and `-T scheduler` lines, measured against 6.8: a message with one
/// recipient delivered and one deferred, a transaction rolled back, `smtpctl pause mda`,
/// `resume mda` and `remove all` (the deferred envelope). 6.8 prints them from two processes, so each process's lines are compared
/// per message and per envelope, in their order: the queue's (message created, envelopes
/// written with their lengths, message committed, envelope deleted or updated) and the
/// scheduler's (inserting, committing, deleting, updating, aborting). Set aside: 6.8's
/// batch lines (`getting batch`, `got r=`, `sleeping`, `waiting for`: smtpd's scheduler has
/// no batches),
/// `queue_message_fd_r` (smtpd's delivery workers open the message themselves) and
/// `queue_envelope_load` (6.8 answers those from its envelope cache without a line).
#[test]
fn queue_and_scheduler_traces_are_opensmtpds() {
    let Some((theirs, mine)) = both_probed(&Scenario {
        what: "queue traces",
        conf: "table aliases { postmaster = root, \
               later = \"|/bin/sh -c 'echo busy >&2; exit 75'\" }\n\
               listen on lo\n\
               action \"local\" mbox alias <aliases>\n\
               match from local for local action \"local\"\n",
        script: "EHLO c.example\n\
                 MAIL FROM:<nobody@localhost>\n\
                 RCPT TO:<nobody@localhost>\n\
                 RCPT TO:<later@localhost>\n\
                 DATA\n\
                 <DATA>\n\
                 MAIL FROM:<nobody@localhost>\n\
                 RSET\n\
                 QUIT\n",
        quiet: 2,
        // 6.8's scheduler logs the removal once its queue process has acknowledged it.
        commands: "pause mda;resume mda;remove all;<QUIET>",
        flags: &["-T", "queue", "-T", "scheduler"],
        ..Default::default()
    }) else {
        return;
    };
    let traced = |log: &str| -> Vec<String> {
        let set_aside = [
            "scheduler: getting batch",
            "scheduler: got r=",
            "scheduler: sleeping",
            "scheduler: waiting for ",
            "queue-backend: queue_message_fd_r(",
            "queue-backend: queue_envelope_load(",
        ];
        let find = |prefix: &str, suffix: &str| -> String {
            log.lines()
                .find(|l| l.contains(prefix) && l.ends_with(suffix))
                .and_then(|l| l.split(prefix).nth(1)?.split(' ').next())
                .map(String::from)
                .unwrap_or_else(|| panic!("no {prefix}…{suffix} line:\n{log}"))
        };
        let msg = find(" smtp message msgid=", "nrcpt=2 proto=ESMTP");
        let delivered = find(" smtp envelope evpid=", "to=<nobody@localhost>");
        let deferred = find(" smtp envelope evpid=", "to=<later@localhost>");
        let rolled = log
            .lines()
            .filter_map(|l| l.strip_prefix("queue-backend: queue_message_create() -> 1 ("))
            .map(|m| m.trim_end_matches(')').to_string())
            .find(|m| *m != msg)
            .unwrap_or_else(|| panic!("no second message:\n{log}"));
        let named = |l: &str| {
            l.replace(&delivered, "EVP_DELIVERED")
                .replace(&deferred, "EVP_DEFERRED")
                .replace(&msg, "MSG")
                .replace(&rolled, "MSG_ROLLED_BACK")
        };
        let lines: Vec<String> = log
            .lines()
            .filter(|l| l.starts_with("queue-backend: ") || l.starts_with("scheduler: "))
            .filter(|l| !set_aside.iter().any(|p| l.starts_with(p)))
            .map(named)
            .collect();
        // Each process's lines about each object, in order; the objects in a fixed order.
        let mut out = Vec::new();
        for process in ["queue-backend: ", "scheduler: "] {
            for object in [
                "EVP_DELIVERED",
                "EVP_DEFERRED",
                "MSG_ROLLED_BACK",
                "MSG",
                "",
            ] {
                out.push(format!("== {process}{object}"));
                for l in lines.iter().filter(|l| l.starts_with(process)) {
                    let about = ["EVP_DELIVERED", "EVP_DEFERRED", "MSG_ROLLED_BACK", "MSG"]
                        .into_iter()
                        .find(|o| l.contains(o))
                        .unwrap_or("");
                    if about == object {
                        out.push(l.clone());
                    }
                }
            }
        }
        out
    };
    let their_traces = traced(&theirs.log);
    assert!(
        their_traces.contains(&"scheduler: updating evp:EVP_DEFERRED".to_string())
            && their_traces.contains(&"scheduler: deleting evp:EVP_DELIVERED (ok)".to_string())
            && their_traces.contains(&"scheduler: aborting msg:MSG_ROLLED_BACK".to_string())
            && their_traces.contains(&"scheduler: resuming mda".to_string()),
        "{their_traces:#?}\n{}",
        theirs.log
    );
    assert_eq!(
        traced(&mine.log),
        their_traces,
        "{}\n{}",
        mine.log,
        theirs.log
    );
    assert_eq!(ctl_seen(&mine.talk), ctl_seen(&theirs.talk));
    let (mut theirs, mut mine) = (theirs, mine);
    for p in [&mut theirs, &mut mine] {
        without_ctl(p);
        without_log_lines(p, &["queue-backend: ", "scheduler: "]);
    }
    without_their_own_mbox(&mut theirs);
    assert_same(&theirs, &mine);
}

/// The `-T tables` dump, measured against 6.8 (with `-v`: 6.8 writes it as debug lines):
/// every table in name order with its backend, type and file, and the entries of those it
/// holds itself — inline and file tables, mappings and lists, an anonymous table of a
/// rule, and the built-in ones. Set aside: the IPv6 entries of `<localhost>` and
/// `<localnames>`, which 6.8 writes in brackets (`[::1]`, then `[[::1]]` and
/// `[ipv6:[::1]]`), where smtpd holds `::1`, `[::1]` and `[ipv6:::1]` (compatibility.md).
#[test]
fn table_dumps_are_opensmtpds() {
    let files = readable_tempdir();
    let aliases = files.path().join("aliases");
    std::fs::write(
        &aliases,
        "postmaster: root\nAbuse: root, nobody\n# comment\n",
    )
    .unwrap();
    let domains = files.path().join("domains");
    std::fs::write(&domains, "Example.ORG\nexample.net\n").unwrap();
    let Some((theirs, mine)) = both_probed(&Scenario {
        what: "table dumps",
        conf: &format!(
            "table aliases file:{}\n\
             table domains \"{}\"\n\
             table users {{ joe = \"1000:1000:/home/joe\", Ann = \"1001:1001:/home/ann\" }}\n\
             table nets {{ 127.0.0.0/8, \"::1\" }}\n\
             listen on lo\n\
             action \"local\" mbox alias <aliases>\n\
             action \"virt\" mbox userbase <users>\n\
             match from src <nets> for domain <domains> action \"virt\"\n\
             match from src {{ 192.0.2.1, 192.0.2.2 }} for local action \"local\"\n\
             match from local for local action \"local\"\n",
            aliases.display(),
            domains.display()
        ),
        script: "EHLO c.example\nQUIT\n",
        quiet: 2,
        flags: &["-v", "-T", "tables"],
        ..Default::default()
    }) else {
        return;
    };
    let dump = |log: &str| -> Vec<String> {
        let mut table = String::new();
        log.lines()
            .filter(|l| l.starts_with("TABLE \"") || l.starts_with("\t\""))
            .filter(|l| {
                if let Some(rest) = l.strip_prefix("TABLE \"") {
                    table = rest.split('"').next().unwrap_or_default().to_string();
                    return true;
                }
                !(matches!(table.as_str(), "<localhost>" | "<localnames>") && l.contains(':'))
            })
            .map(String::from)
            .collect()
    };
    let their_dump = dump(&theirs.log);
    assert!(
        their_dump.contains(&format!(
            "TABLE \"aliases\" backend=static type=HASH config=\"{}\"",
            aliases.display()
        )) && their_dump.contains(&"\t\"abuse\" -> \"root, nobody\"".to_string())
            && their_dump
                .contains(&"TABLE \"<getpwnam>\" backend=getpwnam type=DYNAMIC".to_string()),
        "{their_dump:#?}\n{}",
        theirs.log
    );
    assert_eq!(dump(&mine.log), their_dump, "{}\n{}", mine.log, theirs.log);
    // The IPv6 forms each holds.
    let local = |log: &str, entry: &str| log.lines().any(|l| l == format!("\t\"{entry}\""));
    for entry in ["[::1]", "[[::1]]", "[ipv6:[::1]]"] {
        assert!(
            local(&theirs.log, entry),
            "6.8 without {entry}:\n{}",
            theirs.log
        );
    }
    for entry in ["::1", "[::1]", "[ipv6:::1]"] {
        assert!(
            local(&mine.log, entry),
            "smtpd without {entry}:\n{}",
            mine.log
        );
    }
    assert_eq!(normalized(&mine.talk), normalized(&theirs.talk));
}
