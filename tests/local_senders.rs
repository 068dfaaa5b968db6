//! `senders <table> masquerade` and `received-auth` on a STARTTLS + AUTH listener of the built
//! daemon, with Python's smtplib as the client: after AUTH, MAIL FROM must match a pattern
//! listed for the user (`530 Sender rejected` otherwise, also for a user the table does not
//! list); `masquerade` puts the envelope sender into `From:`; Received carries
//! `auth=yes user=USER`.

mod local_support;

use std::process::Command;

use local_support::*;

#[test]
fn senders_masquerade_and_received_auth() {
    if Command::new("python3").arg("-V").output().is_err() {
        local_support::common::skip("python3 missing: senders test not run");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let vmail = vmail(dir.path());
    let cert =
        rcgen::generate_simple_self_signed(vec!["mx.test".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    // A private key readable by others is refused, as by OpenSMTPD.
    std::fs::set_permissions(
        &key_path,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let hash = smtpd::table::credentials::encrypt(b"secret").unwrap();
    let (port, optional) = (free_port(), free_port());
    let conf = format!(
        "pki mx.test cert \"{}\" key \"{}\"\n\
         table creds {{ \"alice\" = \"{hash}\", \"carol\" = \"{hash}\" }}\n\
         table allowed {{ \"alice\" = \"alice@example.org, @alias.test\" }}\n\
         table users {{ bob = \"2000:2000:/var/empty\" }}\n\
         listen on 127.0.0.1 port PORT hostname mx.test tls pki mx.test auth <creds> senders <allowed> masquerade received-auth\n\
         listen on 127.0.0.1 port {optional} hostname mx.test tls pki mx.test auth-optional <creds> senders <allowed>\n\
         action \"mb\" maildir \"{}/%{{user.username}}\" userbase <users>\n\
         match from any auth for domain \"example.org\" action \"mb\"\n",
        cert_path.display(),
        key_path.display(),
        vmail.display()
    );
    let d = start(dir.path(), &conf, port);
    let ca = cert_path.display();
    let script = format!(
        r#"
import smtplib, ssl
ctx = ssl.create_default_context(cafile="{ca}")
def session(user):
    s = smtplib.SMTP("127.0.0.1", {port}, local_hostname="client.example", timeout=10)
    s.starttls(context=ctx)
    s.ehlo()
    s.login(user, "secret")
    return s
def show(r):
    print(r[0], r[1].decode())
    return r

s = session("alice")
assert show(s.docmd("MAIL", "FROM:<bob@example.org>")) == (530, b"Sender rejected")
assert show(s.docmd("MAIL", "FROM:<>")) == (530, b"Sender rejected")
assert show(s.docmd("MAIL", "FROM:<alice+list@example.org>"))[0] == 250
s.rset()
assert show(s.docmd("MAIL", "FROM:<anyone@alias.test>"))[0] == 250
assert show(s.docmd("RCPT", "TO:<bob@example.org>"))[0] == 250
assert show(s.data(b"From: Fake Name <fake@evil.test>\r\nSubject: masq\r\n\r\nhi\r\n"))[0] == 250
s.quit()

s = session("carol")
assert show(s.docmd("MAIL", "FROM:<carol@example.org>")) == (530, b"Sender rejected")
s.quit()

# auth-optional: a session that did not authenticate is not checked.
s = smtplib.SMTP("127.0.0.1", {optional}, local_hostname="client.example", timeout=10)
s.starttls(context=ctx)
s.ehlo()
assert show(s.docmd("MAIL", "FROM:<bob@example.org>"))[0] == 250
s.quit()
"#
    );
    let out = Command::new("python3")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    print!("{text}");
    assert!(out.status.success(), "{text}");

    let mail = delivered(&vmail.join("bob"));
    println!("delivered:\n{mail}");
    assert!(
        mail.contains("Return-Path: <anyone@alias.test>\n"),
        "{mail}"
    );
    let from = mail
        .lines()
        .find(|l| l.starts_with("From:"))
        .unwrap_or_default();
    assert!(
        from.contains("<anyone@alias.test>") && !from.contains("fake@evil.test"),
        "{mail}"
    );
    // Received: ... with ESMTPSA id MSGID (TLSINFO) auth=yes user=alice
    let received: String = mail.split("\nFrom:").next().unwrap_or_default().to_string();
    assert!(received.contains("with ESMTPSA id "), "{mail}");
    assert!(received.contains(":NO) auth=yes user=alice\n"), "{mail}");
    let log = d.wait_log("result=\"530 Sender rejected\"");
    assert!(
        log.contains(
            "smtp failed-command command=\"MAIL FROM:<bob@example.org>\" result=\"530 Sender rejected\""
        ),
        "{log}"
    );
}
