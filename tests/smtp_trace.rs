//! `-T smtp` against the built daemon: OpenSMTPD's trace lines for one session, in order —
//! the listener line, the state changes, every line read (`<<<`), every reply line sent
//! (`>>>`), the message lines (`<<< [MSG]`) and their end (`<<< [EOM]`).

mod common;

use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

#[test]
fn a_session_traced_as_opensmtpd_traces_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = common::Daemon::start(
        dir.path(),
        "table users { foo = \"2000:2000:/var/empty\" }\n\
         listen on 127.0.0.1 port PORT hostname mx.test\n\
         action \"local\" maildir userbase <users>\n\
         match from any for domain \"trace.test\" action \"local\"\n",
        &["-P", "mda", "-T", "smtp"],
    );
    let port = d.port;
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut w = stream.try_clone().unwrap();
    let mut r = BufReader::new(stream);
    let mut reply = || common::read_reply(&mut r);
    reply();
    for line in [
        "EHLO client.test",
        "MAIL FROM:<a@client.test>",
        "RCPT TO:<foo@trace.test>",
        "DATA",
        "Subject: traced\r\n\r\nhello\r\n.",
        "QUIT",
    ] {
        w.write_all(format!("{line}\r\n").as_bytes()).unwrap();
        reply();
    }
    // Wait (bounded) for the last line, then stop the daemon.
    assert!(d.wait_log("STATE_HELO -> STATE_QUIT", 10), "{}", d.log());
    let log = d.log();
    drop(d);
    // The session that said EHLO (the daemon's start-up probe made one before it).
    let sid = log
        .lines()
        .filter(|l| l.ends_with(": <<< EHLO client.test"))
        .find_map(|l| l.strip_prefix("smtp: ")?.split(':').next())
        .expect("a trace line")
        .to_string();
    // The message id in the 250 varies: it is replaced by MSGID.
    let traced: Vec<String> = log
        .lines()
        .filter(|l| l.starts_with("smtp: ") || l.starts_with("<<< "))
        .map(|l| match l.split_once(">>> 250 2.0.0 ") {
            Some((head, rest)) if rest.ends_with(" Message accepted for delivery") => {
                format!("{head}>>> 250 2.0.0 MSGID Message accepted for delivery")
            }
            _ => l.to_string(),
        })
        .collect();
    let want = [
        format!("smtp: {sid}: connected to listener 0x1 [hostname=mx.test, port={port}, tag=]"),
        format!("smtp: {sid}: STATE_NEW -> STATE_CONNECTED"),
        format!("smtp: {sid}: >>> 220 mx.test ESMTP OpenSMTPD"),
        format!("smtp: {sid}: <<< EHLO client.test"),
        format!("smtp: {sid}: STATE_CONNECTED -> STATE_HELO"),
        format!("smtp: {sid}: >>> 250-mx.test Hello client.test [127.0.0.1], pleased to meet you"),
        format!("smtp: {sid}: <<< MAIL FROM:<a@client.test>"),
        format!("smtp: {sid}: >>> 250 2.0.0 Ok"),
        format!("smtp: {sid}: <<< RCPT TO:<foo@trace.test>"),
        format!("smtp: {sid}: >>> 250 2.1.5 Destination address valid: Recipient ok"),
        format!("smtp: {sid}: <<< DATA"),
        format!("smtp: {sid}: >>> 354 Enter mail, end with \".\" on a line by itself"),
        format!("smtp: {sid}: STATE_HELO -> STATE_BODY"),
        "<<< [MSG] Subject: traced".to_string(),
        "<<< [MSG] ".to_string(),
        "<<< [MSG] hello".to_string(),
        // As received: the final dot too (and leading dots still doubled).
        "<<< [MSG] .".to_string(),
        "<<< [EOM]".to_string(),
        format!("smtp: {sid}: >>> 250 2.0.0 MSGID Message accepted for delivery"),
        format!("smtp: {sid}: STATE_BODY -> STATE_HELO"),
        format!("smtp: {sid}: <<< QUIT"),
        format!("smtp: {sid}: >>> 221 2.0.0 Bye"),
        format!("smtp: {sid}: STATE_HELO -> STATE_QUIT"),
    ];
    // Every expected line, in this order (the EHLO reply has more lines in between, and
    // the 250 after the message carries its id).
    let mut at = 0;
    for line in &want {
        match traced[at..].iter().position(|l| l == line) {
            Some(i) => at += i + 1,
            None => panic!("missing or out of order: {line:?}\n{}", traced.join("\n")),
        }
    }
}

/// The `-T queue` and `-T scheduler` lines that mention `id`, with every message and
/// envelope id replaced by its name in `names` (lines of other ids left out).
fn traced_for(log: &str, id: &str, names: &[(&str, &str)]) -> Vec<String> {
    log.lines()
        .filter(|l| l.starts_with("queue-backend: ") || l.starts_with("scheduler: "))
        .filter(|l| l.contains(id))
        .map(|l| {
            let mut l = l.to_string();
            // Longest first: an envelope id starts with its message's id.
            let mut names = names.to_vec();
            names.sort_by_key(|(id, _)| std::cmp::Reverse(id.len()));
            for (id, name) in names {
                l = l.replace(id, name);
            }
            l
        })
        .collect()
}

/// The `-T queue` lines with each envelope's length (its size, which follows its dates and
/// names) replaced by `LEN`: `queue_envelope_create(ID, LEN)`, `queue_envelope_walk() ->
/// LEN (ID)`, `queue_envelope_load(ID) -> LEN`. A length of 0 (a failure) stays.
fn without_lengths(lines: Vec<String>) -> Vec<String> {
    let lengths = [
        r"^(queue-backend: queue_envelope_create\([A-Za-z0-9_]+, )[1-9][0-9]*(\) -> )",
        r"^(queue-backend: queue_envelope_walk\(\) -> )[1-9][0-9]*( \()",
        r"^(queue-backend: queue_envelope_load\([A-Za-z0-9_]+\) -> )[1-9][0-9]*()$",
    ]
    .map(|r| regex::Regex::new(r).unwrap());
    lines
        .into_iter()
        .map(|l| {
            lengths
                .iter()
                .fold(l, |l, re| re.replace(&l, "${1}LEN${2}").into_owned())
        })
        .collect()
}

#[test]
fn the_queue_and_the_scheduler_traced_as_opensmtpd_traces_them() {
    let dir = tempfile::tempdir().unwrap();
    let (vmail, ids) = common::vmail(dir.path());
    let conf = format!(
        "table users {{ foo = \"{ids}:{}\" }}\n\
         listen on 127.0.0.1 port PORT\n\
         action \"ok\" mda \"cat > /dev/null\" userbase <users>\n\
         action \"later\" mda \"exit 75\" userbase <users>\n\
         match from any for domain \"ok.test\" action \"ok\"\n\
         match from any for domain \"later.test\" action \"later\"\n",
        vmail.display()
    );
    let traces = ["-T", "queue", "-T", "scheduler"];
    let d = common::Daemon::start(dir.path(), &conf, &traces);
    let replies = common::dialogue(
        d.port,
        &[
            "EHLO client.test",
            "MAIL FROM:<a@client.test>",
            "RCPT TO:<foo@ok.test>",
            "RCPT TO:<foo@later.test>",
            "DATA",
            "Subject: traced\r\n\r\nhello\r\n.",
            // A transaction that ends without a message: rolled back.
            "MAIL FROM:<b@client.test>",
            "RSET",
            "QUIT",
        ],
    );
    assert!(replies[6].starts_with("250 2.0.0 "), "{replies:?}");
    let msgid = replies[6].split_whitespace().nth(2).unwrap().to_string();
    assert!(
        d.wait_log("scheduler: updating evp:", 20),
        "no temporary failure traced:\n{}",
        d.log()
    );
    assert!(d.wait_log("(ok)", 20), "no delivery traced:\n{}", d.log());
    // smtpctl pause and resume of the local agent.
    let spool = dir.path().join("spool");
    for verb in ["pause", "resume"] {
        let out = common::smtpctl(&spool, &[verb, "mda"]);
        assert!(out.status.success(), "{out:?}");
    }
    assert!(d.wait_log("scheduler: resuming mda", 10), "{}", d.log());
    let log = d.stop();

    // The envelopes, from their `smtp envelope` lines.
    let evp = |to: &str| {
        log.lines()
            .find(|l| l.contains(" smtp envelope ") && l.ends_with(&format!("to=<{to}>")))
            .and_then(|l| l.split("evpid=").nth(1)?.split(' ').next())
            .map(String::from)
            .unwrap_or_else(|| panic!("no envelope for {to}:\n{log}"))
    };
    let (ok, later) = (evp("foo@ok.test"), evp("foo@later.test"));
    let names = [
        (msgid.as_str(), "MSG"),
        (ok.as_str(), "EVP_OK"),
        (later.as_str(), "EVP_LATER"),
    ];
    // The message's own lines, up to its commit (its deliveries follow, side by side).
    assert_eq!(
        without_lengths(traced_for(&log, &msgid, &names))[..7],
        [
            "queue-backend: queue_message_create() -> 1 (MSG)",
            "queue-backend: queue_envelope_create(MSG00000000, LEN) -> 1 (EVP_OK)",
            "queue-backend: queue_envelope_create(EVP_OK, LEN) -> 1 (EVP_LATER)",
            "queue-backend: queue_message_commit(MSG) -> 1",
            "scheduler: inserting evp:EVP_OK",
            "scheduler: inserting evp:EVP_LATER",
            "scheduler: committing msg:MSG",
        ],
        "{log}"
    );
    assert_eq!(
        without_lengths(traced_for(&log, &ok, &names)),
        [
            "queue-backend: queue_envelope_create(MSG00000000, LEN) -> 1 (EVP_OK)",
            "queue-backend: queue_envelope_create(EVP_OK, LEN) -> 1 (EVP_LATER)",
            "scheduler: inserting evp:EVP_OK",
            "queue-backend: queue_envelope_load(EVP_OK) -> LEN",
            "queue-backend: queue_envelope_delete(EVP_OK) -> 1",
            "scheduler: deleting evp:EVP_OK (ok)",
        ],
        "{log}"
    );
    assert_eq!(
        without_lengths(traced_for(&log, &later, &names)),
        [
            "queue-backend: queue_envelope_create(EVP_OK, LEN) -> 1 (EVP_LATER)",
            "scheduler: inserting evp:EVP_LATER",
            "queue-backend: queue_envelope_load(EVP_LATER) -> LEN",
            "queue-backend: queue_envelope_update(EVP_LATER) -> 1",
            "scheduler: updating evp:EVP_LATER",
        ],
        "{log}"
    );
    // The rolled-back transaction: created at MAIL FROM, deleted at RSET.
    let rolled = log
        .lines()
        .filter_map(|l| l.strip_prefix("queue-backend: queue_message_create() -> 1 ("))
        .map(|rest| rest.trim_end_matches(')'))
        .find(|m| *m != msgid)
        .unwrap_or_else(|| panic!("no second message created:\n{log}"))
        .to_string();
    assert_eq!(
        traced_for(&log, &rolled, &[(&rolled, "MSG2")]),
        [
            "queue-backend: queue_message_create() -> 1 (MSG2)",
            "queue-backend: queue_message_delete(MSG2) -> 1",
            "scheduler: aborting msg:MSG2",
        ],
        "{log}"
    );
    let agent: Vec<&str> = log
        .lines()
        .filter(|l| l.ends_with(" mda") && l.starts_with("scheduler: "))
        .collect();
    assert_eq!(agent, ["scheduler: pausing mda", "scheduler: resuming mda"]);

    // Started again on the same queue: the walk finds the envelope that waits, and the
    // scheduler takes it in.
    let d = common::Daemon::start(dir.path(), &conf, &traces);
    assert!(d.wait_log("scheduler: committing msg:", 10), "{}", d.log());
    let log = d.stop();
    let start: Vec<String> = without_lengths(
        log.lines()
            .filter(|l| l.starts_with("queue-backend: ") || l.starts_with("scheduler: "))
            .take(5)
            .map(|l| l.replace(&later, "EVP_LATER").replace(&msgid, "MSG"))
            .collect(),
    );
    assert_eq!(
        start,
        [
            "queue-backend: queue_init(1) -> 1",
            "queue-backend: queue_envelope_walk() -> LEN (EVP_LATER)",
            "scheduler: inserting evp:EVP_LATER",
            "queue-backend: queue_envelope_walk() -> -1 (0000000000000000)",
            "scheduler: committing msg:MSG",
        ],
        "{log}"
    );
}

#[test]
fn tables_are_dumped_at_start_with_t_tables_and_v() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("domains");
    std::fs::write(&list, "B.example\na.example\n").unwrap();
    let conf = format!(
        "table domains file:{}\n\
         table aliases {{ postmaster = root, abuse = \"root, nobody\" }}\n\
         listen on 127.0.0.1 port PORT\n\
         action \"local\" mbox alias <aliases>\n\
         match from any for domain <domains> action \"local\"\n",
        list.display()
    );
    let d = common::Daemon::start(dir.path(), &conf, &["-v", "-T", "tables"]);
    let log = d.stop();
    let dump: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with("TABLE \"") || l.starts_with('\t'))
        .collect();
    let at = |line: &str| dump.iter().position(|l| *l == line);
    let aliases = at("TABLE \"aliases\" backend=static type=HASH").expect(&log);
    assert_eq!(
        dump[aliases + 1..aliases + 3],
        [
            "\t\"abuse\" -> \"root, nobody\"",
            "\t\"postmaster\" -> \"root\""
        ]
    );
    let domains = at(&format!(
        "TABLE \"domains\" backend=static type=LIST config=\"{}\"",
        list.display()
    ))
    .expect(&log);
    assert_eq!(
        dump[domains + 1..domains + 3],
        ["\t\"a.example\"", "\t\"b.example\""]
    );
    // In name order, the built-in tables (`<…>`) first.
    let getpwnam = at("TABLE \"<getpwnam>\" backend=getpwnam type=DYNAMIC").expect(&log);
    assert!(getpwnam < aliases && aliases < domains, "{dump:#?}");

    // Without -v the dump is not shown (debug lines, as in 6.8).
    let d = common::Daemon::start(dir.path(), &conf, &["-T", "tables"]);
    let log = d.stop();
    assert!(!log.contains("TABLE \""), "{log}");
}
