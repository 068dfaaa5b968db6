//! STARTTLS, SMTPS and AUTH against the built daemon, with Python's smtplib as the client and
//! an rcgen certificate: AUTH PLAIN (initial response and after 334) and LOGIN, a wrong
//! password, AUTH refused before TLS, and relaying allowed only after authentication.

mod common;
use common::free_port;

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(dir: &Path, conf: &str, ports: &[u16]) -> Daemon {
    std::fs::write(dir.join("smtpd.conf"), conf).unwrap();
    let mut d = Daemon(
        Command::new(env!("CARGO_BIN_EXE_smtpd"))
            .args(["-d", "-P", "mda", "-P", "mta", "-f"])
            .arg(dir.join("smtpd.conf"))
            .arg("--spool")
            .arg(dir.join("spool"))
            .arg("--resolv-conf")
            .arg("/nonexistent")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let t = Instant::now();
    while !ports
        .iter()
        .all(|p| TcpStream::connect(("127.0.0.1", *p)).is_ok())
    {
        if let Ok(Some(status)) = d.0.try_wait() {
            panic!("smtpd exited: {status}");
        }
        assert!(t.elapsed() < Duration::from_secs(10), "smtpd did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    d
}

fn python(script: &str) -> (bool, String) {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn starttls_smtps_and_auth_with_python_smtplib() {
    if Command::new("python3").arg("-V").output().is_err() {
        common::skip("python3 missing");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
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
    let (p1, p2, p3) = (free_port(), free_port(), free_port());
    let conf = format!(
        "pki mx.test cert \"{}\" key \"{}\"\n\
         table creds {{ \"alice\" = \"{hash}\" }}\n\
         listen on 127.0.0.1 port {p1} hostname mx.test tls pki mx.test auth-optional <creds>\n\
         listen on 127.0.0.1 port {p2} hostname mx.test smtps pki mx.test auth <creds>\n\
         listen on 127.0.0.1 port {p3} hostname mx.test auth <creds> auth-plaintext\n\
         action \"relay\" relay\n\
         match from any auth for any action \"relay\"\n",
        cert_path.display(),
        key_path.display()
    );
    let _d = start(dir.path(), &conf, &[p1, p2, p3]);
    let ca = cert_path.display();
    let script = format!(
        r#"
import smtplib, ssl
ctx = ssl.create_default_context(cafile="{ca}")
def expect(code, f):
    try:
        r = f()
    except smtplib.SMTPResponseException as e:
        r = (e.smtp_code, e.smtp_error)
    except smtplib.SMTPRecipientsRefused as e:
        r = list(e.recipients.values())[0]
    assert r[0] == code, (code, r)
    print(code, r[1].decode() if isinstance(r[1], bytes) else r[1])

# Plain text: no AUTH offered, AUTH refused, relaying refused.
s = smtplib.SMTP("127.0.0.1", {p1}, local_hostname="client.example", timeout=10)
s.ehlo()
assert "starttls" in s.esmtp_features and "auth" not in s.esmtp_features, s.esmtp_features
expect(503, lambda: s.docmd("AUTH", "PLAIN AGFsaWNlAHNlY3JldA=="))
s.docmd("MAIL", "FROM:<alice@example.org>")
expect(550, lambda: s.docmd("RCPT", "TO:<bob@elsewhere.example>"))
s.quit()

# STARTTLS, then AUTH PLAIN with the initial response: relaying allowed.
s = smtplib.SMTP("127.0.0.1", {p1}, local_hostname="client.example", timeout=10)
s.starttls(context=ctx)
s.ehlo()
assert "auth" in s.esmtp_features, s.esmtp_features
s.user, s.password = "alice", "wrong"
expect(535, lambda: s.auth("PLAIN", s.auth_plain))
s.user, s.password = "alice", "secret"
expect(235, lambda: s.auth("PLAIN", s.auth_plain))
refused = s.sendmail("alice@example.org", ["bob@elsewhere.example"], "Subject: relayed\r\n\r\nhi\r\n")
assert refused == {{}}, refused
print("relayed after auth")
s.quit()

# STARTTLS, AUTH PLAIN answered after the 334 challenge.
s = smtplib.SMTP("127.0.0.1", {p1}, local_hostname="client.example", timeout=10)
s.starttls(context=ctx)
s.ehlo()
s.user, s.password = "alice", "secret"
expect(235, lambda: s.auth("PLAIN", s.auth_plain, initial_response_ok=False))
s.quit()

# AUTH replies of the catalogue, over TLS.
s = smtplib.SMTP("127.0.0.1", {p1}, local_hostname="client.example", timeout=10)
s.starttls(context=ctx)
s.ehlo()
expect(503, lambda: s.docmd("STARTTLS"))
expect(501, lambda: s.docmd("AUTH"))
expect(504, lambda: s.docmd("AUTH", "CRAM-MD5"))
expect(334, lambda: s.docmd("AUTH", "PLAIN"))
expect(501, lambda: s.docmd("%%%notbase64"))
expect(334, lambda: s.docmd("AUTH", "LOGIN"))
expect(334, lambda: s.docmd("YWxpY2U="))
expect(235, lambda: s.docmd("c2VjcmV0"))
expect(503, lambda: s.docmd("AUTH", "PLAIN AGFsaWNlAHNlY3JldA=="))
s.quit()

# The other PLAIN form, with an authorization identity: authzid NUL user NUL password.
import base64
s = smtplib.SMTP("127.0.0.1", {p1}, local_hostname="client.example", timeout=10)
s.starttls(context=ctx)
s.ehlo()
expect(235, lambda: s.docmd("AUTH", "PLAIN " + base64.b64encode(b"alice\0alice\0secret").decode()))
s.quit()

# `auth` (required) on the SMTPS listener: no mail before AUTH.
s = smtplib.SMTP_SSL("127.0.0.1", {p2}, local_hostname="client.example", timeout=10, context=ctx)
s.ehlo()
expect(530, lambda: s.docmd("MAIL", "FROM:<alice@example.org>"))
s.quit()

# `auth-plaintext`: AUTH offered and accepted without TLS, by explicit choice only.
s = smtplib.SMTP("127.0.0.1", {p3}, local_hostname="client.example", timeout=10)
s.ehlo()
assert "auth" in s.esmtp_features and "starttls" not in s.esmtp_features, s.esmtp_features
expect(530, lambda: s.docmd("MAIL", "FROM:<alice@example.org>"))
s.user, s.password = "alice", "secret"
expect(235, lambda: s.auth("PLAIN", s.auth_plain))
print("plaintext auth ok")
s.quit()

# SMTPS with AUTH LOGIN.
s = smtplib.SMTP_SSL("127.0.0.1", {p2}, local_hostname="client.example", timeout=10, context=ctx)
s.ehlo()
s.user, s.password = "alice", "secret"
expect(235, lambda: s.auth("LOGIN", s.auth_login, initial_response_ok=False))
refused = s.sendmail("alice@example.org", ["carol@elsewhere.example"], "Subject: smtps\r\n\r\nhi\r\n")
assert refused == {{}}, refused
print("smtps ok")
s.quit()
"#
    );
    let (ok, text) = python(&script);
    println!("{text}");
    assert!(ok, "{text}");
    assert!(
        text.contains("relayed after auth") && text.contains("smtps ok"),
        "{text}"
    );
    assert!(text.contains("535 "), "{text}");
}
