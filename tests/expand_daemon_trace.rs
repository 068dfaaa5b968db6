//! `-T expand` through the built daemon: `smtpd -d -v -T expand` with the walkthrough's
//! configuration writes, for each RCPT, the lines OpenSMTPD writes (pointers aside): the
//! alias chain `abuse -> postmaster -> root -> foo` of the specification's baseline, and a
//! user whose `.forward` sends the mail on to another user. Started as root, the `.forward`
//! (in a home only its owner can enter) is read by the privileged broker.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

/// OpenSMTPD 6.8's lines for `RCPT TO:<abuse@bsdsx.fr>` (baseline session 1), verbatim:
/// the start of the session's lines that the walkthrough test also reads, up to the end
/// of that recipient's expansion.
fn abuse_lines() -> &'static str {
    const SESSION_1: &str = include_str!("data/baseline_session1_expand.txt");
    const END: &str = "expand: 0x55d81a3861c8: clearing expand tree\n";
    let end = SESSION_1.find(END).expect("the end of the abuse expansion") + END.len();
    &SESSION_1[..end]
}

/// The lines for `RCPT TO:<bar@bsdsx.fr>` when bar's `.forward` holds `foo`.
const BAR: &str = r#"
expand: 0x1000: expand_insert() called for address:bar@bsdsx.fr[parent=(nil), rule=(nil)]
expand: 0x1000: inserted node 0x1060
expand: lka_expand: address: bar@bsdsx.fr [depth=0]
expand: 0x1000: expand_insert() called for username:bar[parent=0x1060, rule=0xa0000, dispatcher=0xd0000]
expand: 0x1000: inserted node 0x10c0
expand: lka_expand: username: bar [depth=1, sameuser=0]
expand: 0x1000: expand_insert() called for username:foo[parent=0x10c0, rule=0xa0000, dispatcher=0xd0000]
expand: 0x1000: inserted node 0x1120
expand: lka_expand: username: foo [depth=2, sameuser=0]
expand: no .forward for user foo, just deliver
expand: 0x1000: clearing expand tree
"#;

/// A line with every `0x…` pointer replaced by `0x?`.
fn without_pointers(line: &str) -> String {
    let re = regex::Regex::new("0x[0-9a-f]+").unwrap();
    re.replace_all(line, "0x?").into_owned()
}

fn lines_of(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(without_pointers)
        .collect()
}

#[test]
fn daemon_writes_opensmtpd_expand_trace_for_aliases_and_forward() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let root = nix::unistd::geteuid().is_root();
    // bar's home and .forward belong to bar; as root, bar is uid 2001 and the home is
    // private to it, so only the privileged broker can read the file.
    let bar_uid = if root {
        2001
    } else {
        nix::unistd::geteuid().as_raw()
    };
    let home = dir.path().join("bar");
    std::fs::create_dir(&home).unwrap();
    std::fs::write(home.join(".forward"), "foo\n").unwrap();
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).unwrap();
    if root {
        for p in [home.join(".forward"), home.clone()] {
            nix::unistd::chown(&p, Some(bar_uid.into()), Some(bar_uid.into())).unwrap();
        }
    }
    let conf = format!(
        "listen on 127.0.0.1 port PORT\n\n\
         table domains {{ \"bsdsx.fr\", \"*.bsdsx.fr\" }}\n\
         table aliases {{ abuse = postmaster, postmaster = root, root = foo }}\n\
         table users {{ foo = \"2000:2000:/var/empty\", bar = \"{bar_uid}:{bar_uid}:{}\" }}\n\n\
         action \"local_mail\" maildir \"{}/vmail/%{{rcpt}}\" junk userbase <users> alias <aliases>\n\n\
         match from any for domain <domains> action \"local_mail\"\n",
        home.display(),
        dir.path().display()
    );
    let d = common::Daemon::start(dir.path(), &conf, &["-v", "-T", "expand", "-P", "mda"]);
    let port = d.port;
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut w = s;
    let mut replies = Vec::new();
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    for cmd in [
        "HELO client.test",
        "MAIL FROM:<someone@example.org>",
        "RCPT TO:<abuse@bsdsx.fr>",
        "RCPT TO:<bar@bsdsx.fr>",
        "QUIT",
    ] {
        w.write_all(format!("{cmd}\r\n").as_bytes()).unwrap();
        let mut l = String::new();
        r.read_line(&mut l).unwrap();
        replies.push(l);
    }
    assert!(replies[2].starts_with("250 "), "{replies:?}");
    assert!(replies[3].starts_with("250 "), "{replies:?}");
    // SIGTERM: the daemon says `Exiting` and closes standard error.
    let stderr = d.stop();
    let trace: Vec<String> = stderr
        .lines()
        .filter(|l| l.starts_with("expand:") || l.starts_with("debug: aliases_get"))
        .map(without_pointers)
        .collect();
    let mut expected = lines_of(abuse_lines());
    expected.extend(lines_of(BAR));
    assert_eq!(trace, expected, "{stderr}");
}
