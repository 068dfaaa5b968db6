//! `smtpd -n` against the built binary: OpenSMTPD 6.8's verdicts on the corpus of real-world
//! and broken configurations, its exact diagnostics, and the `-n -v` round trip.

use std::path::{Path, PathBuf};
use std::process::Command;

fn smtpd() -> &'static str {
    env!("CARGO_BIN_EXE_smtpd")
}

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus")
}

/// Copy the corpus into a scratch directory with `@STUBS@` filled in, like check.sh does.
fn materialize(set: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let stubs = dir.path().join("stubs");
    std::fs::create_dir(&stubs).unwrap();
    for e in std::fs::read_dir(corpus().join("stubs")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), stubs.join(e.file_name())).unwrap();
    }
    for e in std::fs::read_dir(corpus().join(set)).unwrap() {
        let e = e.unwrap();
        let text = std::fs::read_to_string(e.path()).unwrap();
        std::fs::write(
            dir.path().join(e.file_name()),
            text.replace("@STUBS@", stubs.to_str().unwrap()),
        )
        .unwrap();
    }
    dir
}

struct Run {
    ok: bool,
    stderr: String,
    stdout: String,
}

fn run_in(dir: &Path, args: &[&str]) -> Run {
    let out = Command::new(smtpd())
        .args(args)
        .current_dir(dir)
        .env("SMTPD_NO_HINTS", "1")
        .output()
        .unwrap();
    Run {
        ok: out.status.success(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
    }
}

/// Rows of a corpus TSV: (id, accepted, expected line).
fn rows(tsv: &str) -> Vec<(String, bool, Option<u32>)> {
    let text = std::fs::read_to_string(corpus().join(tsv)).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split('\t').collect();
    let col = |names: &[&str]| header.iter().position(|h| names.contains(h));
    let id = col(&["id", "name"]).unwrap();
    let verdict = col(&["opensmtpd_verdict", "verdict"]).unwrap();
    let line = col(&["opensmtpd_error_line", "line"]).unwrap();
    lines
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            let ok = matches!(f[verdict], "OK" | "ok" | "accepted");
            (
                f[id].to_string(),
                ok,
                f.get(line).and_then(|x| x.parse().ok()),
            )
        })
        .collect()
}

fn first_line_number(stderr: &str, file: &str) -> Option<u32> {
    let prefix = format!("{file}:");
    stderr.lines().find_map(|l| {
        let rest = l.strip_prefix(&prefix)?;
        rest.split(':').next()?.parse().ok()
    })
}

fn check_set(set: &str, tsv: &str) {
    let dir = materialize(set);
    let mut failures = Vec::new();
    let rows = rows(tsv);
    assert!(
        rows.len() >= 20,
        "corpus {set} has only {} rows",
        rows.len()
    );
    for (id, accepted, line) in &rows {
        let file = format!("{id}.conf");
        let r = run_in(dir.path(), &["-n", "-f", &file]);
        if r.ok != *accepted {
            failures.push(format!(
                "{id}: expected {}, got {}: {}",
                accepted,
                r.ok,
                r.stderr.trim()
            ));
            continue;
        }
        if !accepted {
            if let Some(l) = line {
                let got = first_line_number(&r.stderr, &file);
                if got != Some(*l) {
                    failures.push(format!(
                        "{id}: expected line {l}, got {got:?}: {}",
                        r.stderr.trim()
                    ));
                }
            }
        } else {
            assert_eq!(r.stderr, "configuration OK\n", "{id}");
        }
    }
    println!(
        "{} passed, {} failed",
        rows.len() - failures.len(),
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn corpus_real_world_configs_match_opensmtpd_verdicts() {
    check_set("real", "real.tsv");
}

#[test]
fn corpus_broken_configs_match_opensmtpd_errors() {
    check_set("broken", "broken.tsv");
}

/// `-n -v` prints the configuration; reading that output again prints the same text and
/// gives the same verdict, for every accepted corpus configuration.
#[test]
fn printed_configuration_reads_back_the_same() {
    let dir = materialize("real");
    let mut checked = 0;
    for (id, accepted, _) in rows("real.tsv") {
        if !accepted {
            continue;
        }
        let first = run_in(dir.path(), &["-n", "-v", "-f", &format!("{id}.conf")]);
        assert!(first.ok, "{id}: {}", first.stderr);
        assert!(
            first.stdout.contains("match "),
            "{id}: no rules printed:\n{}",
            first.stdout
        );
        let printed = dir.path().join(format!("{id}.printed"));
        std::fs::write(&printed, &first.stdout).unwrap();
        let second = run_in(dir.path(), &["-n", "-v", "-f", printed.to_str().unwrap()]);
        assert!(
            second.ok,
            "{id}: printed config rejected: {}\n{}",
            second.stderr, first.stdout
        );
        assert_eq!(
            first.stdout, second.stdout,
            "{id}: printing is not a fixpoint"
        );
        checked += 1;
    }
    assert!(checked >= 30, "only {checked} configs round-tripped");
}

/// Exact diagnostics of `smtpd -n` (OpenSMTPD 6.8's wording, file and line).
#[test]
fn diagnostics_are_opensmtpds() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let cert = data.join("cert.pem");
    let key = data.join("key.pem");
    let pki = format!(
        "pki foo cert \"{}\" key \"{}\"\n",
        cert.display(),
        key.display()
    );
    let m = "match from any for any action \"l\"\n";
    let cases: Vec<(String, &str)> = vec![
        ("listen on lo\nlisten on lo\nmatch from any for domain \"example.org\" action\n".into(), "F:3: syntax error\nwarn: no rules, nothing to do\n"),
        (
            "listen on lo\naction \"local\" maildir alias <nosuch>\nmatch for any action \"local\"\n".into(),
            "F:2: no such table: nosuch\nF:3: no such dispatcher: local\nwarn: no rules, nothing to do\n",
        ),
        ("listen on lo\n\nmatch from any action \"nope\"\n".into(), "F:3: no such dispatcher: nope\nwarn: no rules, nothing to do\n"),
        (
            format!("action \"local\" mbox\naction \"local\" mbox\n{m}").replace("\"l\"", "\"local\""),
            "F:2: dispatcher already declared with that name: local\n",
        ),
        ("table t { a }\ntable t { b }\n".into(), "smtpd: table_create: table \"t\" already defined\n"),
        ("listen on 127.0.0.1 port 2600 auth\n".into(), "smtpd: invalid listen option: auth requires tls/smtps\n"),
        (format!("{pki}listen on 127.0.0.1 pki foo\n"), "smtpd: invalid listen option: pki requires tls/smtps\n"),
        ("listen on 127.0.0.1 tls pki nosuch\n".into(), "pki name not found: nosuch\nsmtpd\n"),
        (format!("{pki}listen on 127.0.0.1 tls pki foo ca nosuch\n"), "ca name not found: nosuch\nsmtpd\n"),
        (format!("{pki}listen on 127.0.0.1 tls smtps pki foo\n"), "F:2: TLS mode already specified\nwarn: no rules, nothing to do\n"),
        ("listen on lo port 2600 port 2601\n".into(), "F:1: port already specified\nwarn: no rules, nothing to do\n"),
        ("listen on lo port 99999\n".into(), "F:1: invalid port: 99999\nwarn: no rules, nothing to do\n"),
        ("listen on lo port -1\n".into(), "F:1: invalid port: -1\nwarn: no rules, nothing to do\n"),
        ("listen on lo port nosuchsvc\n".into(), "F:1: invalid port: nosuchsvc\nwarn: no rules, nothing to do\n"),
        ("listen on nosuchiface0\n".into(), "smtpd: invalid virtual ip or interface: nosuchiface0\n"),
        (
            format!("listen on $addr\naction \"l\" mbox\n{m}"),
            "F:1: macro 'addr' not defined\nF:1: syntax error\nF:3: no such dispatcher: l\nwarn: no rules, nothing to do\n",
        ),
        ("\"my addr\" = \"127.0.0.1\"\n".into(), "F:1: macro name cannot contain whitespace\nwarn: no rules, nothing to do\n"),
        ("match = \"x\"\n".into(), "F:1: syntax error\nwarn: no rules, nothing to do\n"),
        ("".into(), "warn: no rules, nothing to do\n"),
        ("frobnicate yes\n".into(), "F:1: syntax error\nwarn: no rules, nothing to do\n"),
        ("action \"local\" mbox user foo\n".into(), "F:1: user may not be specified for this dispatcher\nwarn: no rules, nothing to do\n"),
        ("action \"local\" forward-only user foo\n".into(), "F:1: user may not be specified for forward-only\nwarn: no rules, nothing to do\n"),
        (
            "table a { x = y }\naction \"l\" maildir alias <a> virtual <a>\n".into(),
            "F:2: alias mapping already specified for this dispatcher\nwarn: no rules, nothing to do\n",
        ),
        (
            "table s { x = y }\naction \"r\" relay auth <s>\n".into(),
            "F:2: auth may not be specified without host on a dispatcher\nwarn: no rules, nothing to do\n",
        ),
        ("action \"r\" relay backup host \"smtp://foo.example.com\"\n".into(), "F:1: backup and host are mutually exclusive\nwarn: no rules, nothing to do\n"),
        ("action \"r\" relay tls tls no-verify\n".into(), "F:1: tls already specified for this dispatcher\nwarn: no rules, nothing to do\n"),
        ("action \"r\" relay srs\n".into(), "F:1: an srs key is required for srs to be specified in an action\nwarn: no rules, nothing to do\n"),
        ("table h { a = b }\naction \"r\" relay host <h>\n".into(), "F:2: table \"h\" may not be used for host lookups\nwarn: no rules, nothing to do\n"),
        ("table h { a }\naction \"r\" relay domain <h>\n".into(), "F:2: table \"h\" may not be used for host lookups\nwarn: no rules, nothing to do\n"),
        ("table h { a }\naction \"r\" relay helo-src <h>\n".into(), "F:2: table \"h\" may not be used for helo-source lookups\nwarn: no rules, nothing to do\n"),
        ("table u { a }\naction \"l\" maildir userbase <u>\n".into(), "F:2: table \"u\" may not be used for userbase lookups\nwarn: no rules, nothing to do\n"),
        ("action \"l\" maildir wrapper nosuch\n".into(), "F:1: no mda wrapper with that name: nosuch\nwarn: no rules, nothing to do\n"),
        ("action \"l\" maildir ttl 5q\n".into(), "F:1: ttl delay \"5q\" is invalid\nwarn: no rules, nothing to do\n"),
        ("action \"l\" maildir ttl 5d ttl 4d\n".into(), "F:1: ttl already specified for this dispatcher\nwarn: no rules, nothing to do\n"),
        ("listen on lo filter nosuch\n".into(), "F:1: no filter exist with that name: nosuch\nwarn: no rules, nothing to do\n"),
        (
            "filter a phase connect match rdns junk\nfilter c1 chain { a }\nfilter c2 chain { c1 }\n".into(),
            "F:3: no filter chain allowed within a filter chain: c1\nwarn: no rules, nothing to do\n",
        ),
        (
            "filter a phase connect match rdns junk\nfilter c chain { a, a }\n".into(),
            "F:2: no filter allowed twice within a filter chain: a\nwarn: no rules, nothing to do\n",
        ),
        (
            "filter a phase connect match rdns junk\nfilter a phase connect match rdns junk\n".into(),
            "F:2: filter already exists with that name: a\nwarn: no rules, nothing to do\n",
        ),
        ("filter f proc nosuch\n".into(), "F:1: no processor exist with that name: nosuch\nwarn: no rules, nothing to do\n"),
        ("filter f phase connect match mail-from <x> junk\n".into(), "F:1: syntax error\nwarn: no rules, nothing to do\n"),
        ("filter f phase commit match rdns junk\n".into(), "F:1: syntax error\nwarn: no rules, nothing to do\n"),
        ("proc p \"/bin/true\"\nproc p \"/bin/true\"\n".into(), "F:2: processor already exists with that name: p\nwarn: no rules, nothing to do\n"),
        (
            "mda wrapper w \"/bin/true\"\nmda wrapper w \"/bin/true\"\n".into(),
            "F:2: mda wrapper already declared with that name: w\nwarn: no rules, nothing to do\n",
        ),
        ("queue ttl 4x\n".into(), "F:1: invalid ttl delay: 4x\nwarn: no rules, nothing to do\n"),
        ("queue ttl 30\n".into(), "F:1: syntax error\nwarn: no rules, nothing to do\n"),
        (format!("queue encryption \"tooshort\"\naction \"l\" mbox\n{m}"), "smtpd: crypto_setup:invalid key for queue encryption\n"),
        ("smtp max-message-size foo\n".into(), "F:1: invalid size: foo\nwarn: no rules, nothing to do\n"),
        ("smtp sub-addr-delim \"++\"\n".into(), "F:1: subaddressing-delimiter must be one character\nwarn: no rules, nothing to do\n"),
        ("smtp sub-addr-delim \"@\"\n".into(), "F:1: sub-addr-delim uses invalid character\nwarn: no rules, nothing to do\n"),
        ("smtp limit max-foo 3\n".into(), "F:1: invalid session limit keyword: max-foo\nwarn: no rules, nothing to do\n"),
        ("mda limit max-foo 3\n".into(), "F:1: invalid scheduler limit keyword: max-foo\nwarn: no rules, nothing to do\n"),
        ("scheduler limit max-foo 3\n".into(), "F:1: invalid scheduler limit keyword: max-foo\nwarn: no rules, nothing to do\n"),
        ("mta limit max-foo 3\n".into(), "F:1: invalid mta limit keyword: max-foo\nwarn: no rules, nothing to do\n"),
        (
            "smtp limit max-rcpt 99999999999999999999\n".into(),
            "F:1: \"99999999999999999999\" invalid number: too large\nF:1: syntax error\nwarn: no rules, nothing to do\n",
        ),
        ("bounce warn-interval 1x\n".into(), "F:1: invalid bounce delay: 1x\nwarn: no rules, nothing to do\n"),
        ("pki \"bad name!\" cert \"/x\"\n".into(), "F:1: not a valid domain name: bad name!\nwarn: no rules, nothing to do\n"),
        ("pki foo dhe bogus\n".into(), "F:1: invalid DHE keyword: bogus\nwarn: no rules, nothing to do\n"),
        (
            format!("pki foo cert \"/nonexistent/cert.pem\" key \"{}\"\nlisten on lo tls pki foo\naction \"l\" mbox\n{m}", key.display()),
            "smtpd: load_pki_tree: failed to load certificate file\n",
        ),
        (format!("pki foo key \"{}\"\naction \"l\" mbox\n{m}", key.display()), "smtpd: load_pki_tree: missing certificate file\n"),
        ("action \"l\" mbox\nmatch from any from local action \"l\"\n".into(), "F:2: from already specified for this rule\nwarn: no rules, nothing to do\n"),
        ("action \"l\" mbox\nmatch from auth auth action \"l\"\n".into(), "F:2: auth already specified for this rule\nwarn: no rules, nothing to do\n"),
        (
            "table m { a = b }\naction \"l\" mbox\nmatch from src <m> action \"l\"\n".into(),
            "F:3: table \"m\" may not be used for from lookups\nwarn: no rules, nothing to do\n",
        ),
        (
            "table t { a = b }\naction \"l\" mbox\nmatch for domain <t> action \"l\"\n".into(),
            "F:3: table \"t\" may not be used for 'for' lookups\nwarn: no rules, nothing to do\n",
        ),
        (
            "table h { a = b }\naction \"l\" mbox\nmatch helo <h> action \"l\"\n".into(),
            "F:3: table \"h\" may not be used for helo lookups\nwarn: no rules, nothing to do\n",
        ),
        (
            "table h { a }\nlisten on lo hostnames <h>\n".into(),
            "F:2: invalid use of table \"h\" as HOSTNAMES parameter\nwarn: no rules, nothing to do\n",
        ),
        (
            format!("{pki}table s {{ a }}\nlisten on lo tls pki foo auth senders <s>\n"),
            "F:3: invalid use of table \"s\" as SENDERS parameter\nwarn: no rules, nothing to do\n",
        ),
        ("listen on lo tag aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n".into(), "F:1: tag name too long\nwarn: no rules, nothing to do\n"),
        ("listen on socket\nlisten on socket\n".into(), "F:2: socket listener already configured\nwarn: no rules, nothing to do\n"),
        ("listen on socket port 25\n".into(), "F:1: syntax error\nwarn: no rules, nothing to do\n"),
        ("table t { a, b = c }\n".into(), "F:1: syntax error\nwarn: no rules, nothing to do\n"),
        ("table t { }\n".into(), "F:1: syntax error\nwarn: no rules, nothing to do\n"),
        ("table x foo:bar\n".into(), "F:1: invalid backend parameter for table: x\nwarn: no rules, nothing to do\n"),
        ("table x foo\n".into(), "smtpd: table_create: backend \"foo\" does not exist\n"),
        (
            "table aliases file:/missing\naction \"l\" mbox alias <aliases>\nmatch action \"l\"\n".into(),
            "/missing: fopen: No such file or directory\nF:1: invalid configuration file /missing for table aliases\nF:2: table \"aliases\" may not be used for alias lookups\nF:3: no such dispatcher: l\nwarn: no rules, nothing to do\n",
        ),
        (
            "include \"/missing.inc\"\n".into(),
            "pushfile: /missing.inc: No such file or directory\nF:1: failed to include file /missing.inc\nwarn: no rules, nothing to do\n",
        ),
        ("action \"local maildir\nmatch action \"local\"\n".into(), "F:2: syntax error\nwarn: no rules, nothing to do\n"),
        ("action match maildir\nmatch action match\n".into(), "F:1: syntax error\nF:2: syntax error\nwarn: no rules, nothing to do\n"),
        ("action \"l\" mbox\nmatch mail-from regex \"([\" action \"l\"\n".to_string(), "configuration OK\n"),
        (format!("action \"l\" mbox\n{m}"), "configuration OK\n"),
        ("action \"l\" relay host \"bogus://x\"\nmatch action \"l\"\n".into(), "configuration OK\n"),
        ("listen on lo\nlisten on lo\naction \"l\" mbox\nmatch tls action \"l\"\nmatch reject\n".into(), "configuration OK\n"),
        ("listen on 10.99.99.99\naction \"l\" lmtp \"/path\" rcpt-to\nmatch action \"l\"\n".into(), "configuration OK\n"),
        ("action \"l\" lmtp \"127.0.0.1:24\"\nmatch action \"l\"\n".into(), "configuration OK\n"),
        ("table t { a = b\nc = d }\naction \"l\" mbox\nmatch action \"l\"\n".into(), "configuration OK\n"),
        ("table t {\na = b }\n".into(), "F:1: syntax error\nF:2: syntax error\nwarn: no rules, nothing to do\n"),
        ("table t { a = b,\nc = d }\n".into(), "F:1: syntax error\nF:2: syntax error\nwarn: no rules, nothing to do\n"),
        // The example of OpenSMTPD 6.8's own behaviour: errors on lines 1, 2 and 4.
        ("table t {\na = b,\nc = d\n}\n".into(), "F:1: syntax error\nF:2: syntax error\nF:4: syntax error\nwarn: no rules, nothing to do\n"),
        ("table senders { a }\n".into(), "F:1: syntax error\nwarn: no rules, nothing to do\n"),
        ("action \"l\" maildir ttl 4d alias <a>\n".into(), "F:1: syntax error\nwarn: no rules, nothing to do\n"),
        ("action \"l\" maildir junk \"/x\"\n".into(), "F:1: syntax error\nwarn: no rules, nothing to do\n"),
        ("listen on lo\naction \"l\" mbox\nmatch action \"l\" for local\n".into(), "F:3: syntax error\n"),
        ("MATCH action \"l\"\n".into(), "F:1: syntax error\nwarn: no rules, nothing to do\n"),
        // Checks OpenSMTPD does not make (observed with 6.8): filter condition tables and
        // listener credentials tables are not kind-checked; relay auth works with domain;
        // `from auth` after `auth`, `from mail-from` after `mail-from` are accepted.
        (format!("table m {{ a = b }}\nfilter f phase connect match src <m> junk\nlisten on lo filter f\naction \"l\" mbox\n{m}"), "configuration OK\n"),
        (format!("{pki}table m {{ a }}\nlisten on lo tls pki foo auth <m>\naction \"l\" mbox\n{m}"), "configuration OK\n"),
        ("table h { a = b }\naction \"r\" relay domain <h> auth <h>\nmatch action \"r\"\n".into(), "configuration OK\n"),
        ("action \"l\" mbox\nmatch auth from auth action \"l\"\n".into(), "configuration OK\n"),
        ("action \"l\" mbox\nmatch mail-from \"b\" from mail-from \"a\" action \"l\"\n".into(), "configuration OK\n"),
        (
            "action \"l\" mbox\nmatch auth from mail-from \"a\" mail-from \"b\" action \"l\"\n".into(),
            "F:2: mail-from already specified for this rule\nwarn: no rules, nothing to do\n",
        ),
        // A statement that cannot continue takes effect before the junk after it is seen.
        ("action \"l\" mbox\nmatch action \"l\" /\n".into(), "F:2: syntax error\n"),
        ("match action \"l\" /\n".into(), "F:1: no such dispatcher: l\nwarn: no rules, nothing to do\n"),
        ("action \"l\" mbox\nmatch from any action \"l\" {\n".into(), "F:2: syntax error\n"),
        ("action \"l\" mbox\r\nmatch action \"l\"\r\n".into(), "F:1: syntax error\nF:2: syntax error\n"),
        ("action \"l\" mbox /\nmatch action \"l\"\n".into(), "F:1: syntax error\n"),
        ("action \"l\" /\nmatch action \"l\"\n".into(), "F:1: syntax error\nF:2: no such dispatcher: l\nwarn: no rules, nothing to do\n"),
        ("action \"l\" relay foo\nmatch action \"l\"\n".into(), "F:1: syntax error\n"),
        ("action \"l\" mbox\naction \"l\" /\n".into(), "F:2: dispatcher already declared with that name: l\nwarn: no rules, nothing to do\n"),
        ("proc p \"x\"\nproc p \"x\" /\n".into(), "F:2: processor already exists with that name: p\nwarn: no rules, nothing to do\n"),
        ("table t { a }\ntable t / \n".into(), "smtpd: table_create: table \"t\" already defined\n"),
        ("mda wrapper w \"x\"\nmda wrapper w \"y\" /\n".into(), "F:2: mda wrapper already declared with that name: w\nwarn: no rules, nothing to do\n"),
        ("listen on socket\nlisten on socket /\n".into(), "F:2: socket listener already configured\nwarn: no rules, nothing to do\n"),
        // smtpd's explicit opt-in to AUTH without TLS: a warning, and still configuration OK.
        (
            "table c { alice = \"x\" }\nlisten on lo auth <c> auth-plaintext\naction \"l\" mbox\nmatch action \"l\"\n".into(),
            "warn: F:2: auth-plaintext: this listener accepts passwords without TLS\nconfiguration OK\n",
        ),
        ("listen on lo auth-plaintext\n".into(), "F:1: auth-plaintext requires auth\nwarn: no rules, nothing to do\n"),
        // Other options may follow it, and it may come before `auth`.
        (
            "table c { alice = \"x\" }\nlisten on lo auth <c> auth-plaintext tag t port 2626\nlisten on lo port 2627 auth-plaintext auth <c>\naction \"l\" mbox\nmatch action \"l\"\n".into(),
            "warn: F:2: auth-plaintext: this listener accepts passwords without TLS\nwarn: F:3: auth-plaintext: this listener accepts passwords without TLS\nconfiguration OK\n",
        ),
        // After a table-less `auth` (system accounts) or `auth-optional`, it is the option too.
        (
            "listen on lo auth auth-plaintext\naction \"l\" mbox\nmatch action \"l\"\n".into(),
            "warn: F:1: auth-plaintext: this listener accepts passwords without TLS\nconfiguration OK\n",
        ),
        (
            "listen on lo auth-optional auth-plaintext\naction \"l\" mbox\nmatch action \"l\"\n".into(),
            "warn: F:1: auth-plaintext: this listener accepts passwords without TLS\nconfiguration OK\n",
        ),
        (format!("queue encryption stdin\naction \"l\" mbox\n{m}"), "smtpd: crypto_setup:invalid key for queue encryption\n"),
        // Without a key, the key is asked for at start-up, not by -n (as 6.8).
        (format!("queue encryption\naction \"l\" mbox\n{m}"), "configuration OK\n"),
        // 6.8's mid-rule actions: `table NAME` makes the (empty, untyped) table before the
        // syntax error, and `filter NAME phase` names the filter before its bad condition.
        (
            "action \"l\" mbox\ntable t\nmatch from src <t> for any action \"l\"\n".into(),
            "F:2: syntax error\nF:3: table \"t\" may not be used for from lookups\nwarn: no rules, nothing to do\n",
        ),
        (
            "filter \"f2\" phase mail-from match mail-from regex <nosuch> reject \"550 no\"\nfilter \"c\" chain { \"f2\" }\nlisten on lo filter \"c\"\naction \"l\" mbox\nmatch from any for local action \"l\"\n".into(),
            "F:1: no such table: nosuch\n",
        ),
        (
            "filter \"f2\" phase mail-from match junkword\nfilter \"f2\" phase connect match rdns junk\naction \"l\" mbox\nmatch from any for local action \"l\"\n".into(),
            "F:1: syntax error\nF:2: filter already exists with that name: f2\n",
        ),
        // An error inside braces that never close: the lines after it are read again.
        (
            "action \"l\" mbox\ntable t { a, \nmatch from src <t> for any action \"l\"\n".into(),
            "F:2: syntax error\n",
        ),
        ("action \"l\" maildir \\\n  alias <nosuch>\n".into(), "F:2: no such table: nosuch\nwarn: no rules, nothing to do\n"),
    ];
    let dir = tempfile::tempdir().unwrap();
    // A table file with a bad line, read on another thread: its messages keep their place.
    std::fs::write(dir.path().join("bad.tbl"), "a b\nc\n").unwrap();
    let mut cases = cases;
    let bad = dir.path().join("bad.tbl");
    let bad = bad.to_str().unwrap();
    let text = format!(
        "table a file:{bad}\ntable b {{ x }}\naction \"l\" mbox alias <a>\nmatch for domain <b> action \"l\"\n"
    );
    let expected = format!(
        "{bad}: invalid map entry line 2\nF:1: invalid configuration file {bad} for table a\nF:3: table \"a\" may not be used for alias lookups\nF:4: no such dispatcher: l\nwarn: no rules, nothing to do\n"
    );
    let expected: &'static str = Box::leak(expected.into_boxed_str());
    cases.push((text, expected));
    let mut failures = Vec::new();
    for (i, (text, expected)) in cases.iter().enumerate() {
        std::fs::write(dir.path().join("F"), text).unwrap();
        let r = run_in(dir.path(), &["-n", "-f", "F"]);
        if r.stderr != *expected {
            failures.push(format!(
                "case {i}:\n--- config\n{text}--- expected\n{expected}--- got\n{}",
                r.stderr
            ));
        }
        assert_eq!(
            r.ok,
            expected.ends_with("configuration OK\n"),
            "case {i} exit status: {}\n{text}",
            r.stderr
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn persistent_macros_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("F"),
        "m = \"nope\"\naction \"l\" mbox\nmatch action $m\n",
    )
    .unwrap();
    let r = run_in(dir.path(), &["-n", "-D", "m=l", "-f", "F"]);
    assert_eq!(r.stderr, "configuration OK\n");
    let r = run_in(
        dir.path(),
        &["-n", "-D", "noequals", "-D", "m=l", "-f", "F"],
    );
    assert_eq!(
        r.stderr,
        "warn: could not parse macro definition noequals\nconfiguration OK\n"
    );
    assert!(r.ok);
    let r = run_in(dir.path(), &["-n", "-f", "F"]);
    assert_eq!(
        r.stderr,
        "F:3: no such dispatcher: nope\nwarn: no rules, nothing to do\n"
    );
}

#[test]
fn errors_in_included_files_name_that_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("inc.conf"),
        "action \"l\" mbox\nbogus line\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("F"),
        "include \"inc.conf\"\nmatch action \"l\"\n",
    )
    .unwrap();
    let r = run_in(dir.path(), &["-n", "-f", "F"]);
    assert_eq!(r.stderr, "inc.conf:2: syntax error\n");
    assert!(!r.ok);
}

#[test]
fn missing_configuration_file() {
    let dir = tempfile::tempdir().unwrap();
    let r = run_in(dir.path(), &["-n", "-f", "nope.conf"]);
    assert_eq!(r.stderr, "pushfile: nope.conf: No such file or directory\n");
    assert!(!r.ok);
}

#[test]
fn hints_follow_the_opensmtpd_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("F"),
        "listen on lo\naccept from any for domain \"x\" deliver to mbox\n\nlsiten on lo\n",
    )
    .unwrap();
    let out = Command::new(smtpd())
        .args(["-n", "-f", "F"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines[0], "F:2: syntax error");
    assert_eq!(
        lines[1],
        "    2 | accept from any for domain \"x\" deliver to mbox"
    );
    assert!(
        lines[2].starts_with("    hint: `accept ... deliver to` is the pre-6.4 syntax"),
        "{err}"
    );
    assert_eq!(lines[3], "F:4: syntax error");
    assert!(lines[5].contains("did you mean `listen`?"), "{err}");
    // As from OpenSMTPD's parser: right after an error, a bad line is not reported until
    // three tokens were taken (here: the newline and `lsiten`, taken as a macro name).
    std::fs::write(
        dir.path().join("F"),
        "listen on lo\naccept from any for domain \"x\" deliver to mbox\nlsiten on lo\n",
    )
    .unwrap();
    let out = Command::new(smtpd())
        .args(["-n", "-f", "F"])
        .current_dir(dir.path())
        .env("SMTPD_NO_HINTS", "1")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "F:2: syntax error\nwarn: no rules, nothing to do\n"
    );
}

#[test]
fn unknown_trace_flags_warn_and_go_on() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("F"),
        "action \"l\" mbox\nmatch action \"l\"\n",
    )
    .unwrap();
    let r = run_in(
        dir.path(),
        &["-n", "-T", "expand", "-T", "bogus", "-f", "F"],
    );
    assert_eq!(
        r.stderr,
        "warn: unknown trace flag \"bogus\"\nconfiguration OK\n"
    );
    assert!(r.ok);
}

#[test]
fn usage_and_version() {
    let out = Command::new(smtpd()).arg("-h").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("version: smtpd "), "{err}");
    assert!(err.contains("usage: smtpd [-dFhnv]"));
    let out = Command::new(smtpd()).arg("-Z").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage: smtpd"));
}
