//! Interoperability with lettre, a widely used Rust SMTP client, against the built daemon:
//! plain SMTP, then STARTTLS with AUTH PLAIN and with AUTH LOGIN on a listener that requires
//! AUTH, and a wrong password refused with 535; every accepted message lands in a maildir.

mod local_support;

use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use local_support::*;

fn message(subject: &str) -> Message {
    Message::builder()
        .from("Alice <alice@client.test>".parse::<Mailbox>().unwrap())
        .to("Bob <bob@example.org>".parse::<Mailbox>().unwrap())
        .subject(subject)
        .body(format!("sent with lettre: {subject}\r\n"))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lettre_plain_and_starttls_with_auth_plain_and_login() {
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
    let (plain, submission) = (free_port(), free_port());
    let conf = format!(
        "pki mx.test cert \"{}\" key \"{}\"\n\
         table creds {{ \"alice\" = \"{hash}\" }}\n\
         table users {{ bob = \"2000:2000:/var/empty\" }}\n\
         listen on 127.0.0.1 port PORT hostname mx.test\n\
         listen on 127.0.0.1 port {submission} hostname mx.test tls-require pki mx.test auth <creds>\n\
         action \"mb\" maildir \"{}/%{{user.username}}\" userbase <users>\n\
         match from any for domain \"example.org\" action \"mb\"\n",
        cert_path.display(),
        key_path.display(),
        vmail.display()
    );
    let d = start(dir.path(), &conf, plain);

    // Plain SMTP.
    let t = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(plain)
        .tls(Tls::None)
        .build();
    let r = t.send(message("plain")).await.unwrap();
    println!("plain: {} {:?}", r.code(), r.message().collect::<Vec<_>>());
    assert!(r.is_positive());

    // STARTTLS + AUTH, each mechanism.
    let tls = TlsParameters::builder("mx.test".to_string())
        .add_root_certificate(Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap())
        .build_rustls()
        .unwrap();
    let submit = |mechanism: Mechanism, password: &str| {
        AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
            .port(submission)
            .tls(Tls::Required(tls.clone()))
            .credentials(Credentials::new("alice".into(), password.into()))
            .authentication(vec![mechanism])
            .build()
    };
    for (mechanism, name) in [(Mechanism::Plain, "plain"), (Mechanism::Login, "login")] {
        let r = submit(mechanism, "secret")
            .send(message(&format!("starttls auth {name}")))
            .await
            .unwrap();
        println!(
            "starttls auth {name}: {} {:?}",
            r.code(),
            r.message().collect::<Vec<_>>()
        );
        assert!(r.is_positive());
    }
    let err = submit(Mechanism::Plain, "wrong")
        .send(message("wrong password"))
        .await
        .unwrap_err();
    println!("wrong password: {err}");
    assert!(err.is_permanent(), "{err}");
    assert!(err.to_string().contains("Authentication failed"), "{err}");

    // Three messages delivered, each with its subject.
    let new = vmail.join("bob/new");
    let t0 = std::time::Instant::now();
    let mut texts = Vec::new();
    while t0.elapsed() < std::time::Duration::from_secs(15) {
        texts = std::fs::read_dir(&new)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
            .collect();
        if texts.len() == 3 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(texts.len(), 3, "{}", d.log());
    for subject in ["plain", "starttls auth plain", "starttls auth login"] {
        let text = texts
            .iter()
            .find(|t| t.contains(&format!("\nSubject: {subject}\n")))
            .unwrap_or_else(|| panic!("{subject} not delivered: {texts:?}"));
        let proto = if subject == "plain" {
            "with ESMTP id"
        } else {
            "with ESMTPSA id"
        };
        assert!(text.contains(proto), "{text}");
    }
    let log = d.log();
    assert_eq!(
        log.matches("smtp authentication user=alice result=ok")
            .count(),
        2,
        "{log}"
    );
    assert!(
        log.contains("smtp authentication user=alice result=permfail"),
        "{log}"
    );
}
