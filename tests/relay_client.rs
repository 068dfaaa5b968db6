//! The relay's SMTP client against a small SMTP sink on loopback: smarthost delivery with
//! CRLF and dot-stuffing, MX routing, 4xx retried through the scheduler, 5xx as a permanent
//! failure, STARTTLS with AUTH PLAIN, and DNS failures mapped as OpenSMTPD does.

mod common;
mod relay_support;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;

use relay_support::{Sink, tls_config};

use smtpd::config::model::{RelayAction, TableId};
use smtpd::deliver::relay::{Outgoing, RelayOutcome, Relayer};
use smtpd::deliver::result::Status;
use smtpd::dns::{Resolver, ZoneResolver};
use smtpd::tls::TlsStore;

const LIMIT: Duration = Duration::from_secs(30);

fn relayer(zone: &str) -> Relayer {
    let resolver: Arc<dyn Resolver> = Arc::new(ZoneResolver::from_zone(zone).unwrap());
    Relayer::new(resolver, TlsStore::default(), "relay.test")
}

fn no_auth(_: &str) -> Option<String> {
    None
}

async fn send(
    r: &Relayer,
    action: &RelayAction,
    url: Option<&str>,
    auth: &(dyn Fn(&str) -> Option<String> + Sync),
    to: &str,
    content: &[u8],
) -> RelayOutcome {
    let mail = Outgoing {
        sender: "alice@origin.test",
        recipient: to,
        content,
    };
    tokio::time::timeout(LIMIT, r.deliver(action, url, auth, &mail, None))
        .await
        .expect("relay attempt bounded")
}

#[tokio::test]
async fn smarthost_gets_crlf_lines_and_dot_stuffed_body() {
    let (sink, addr) = Sink::default().start("127.0.0.1:0").await.unwrap();
    let url = format!("smtp://127.0.0.1:{}", addr.port());
    let action = RelayAction {
        helo: Some("out.relay.test".into()),
        ..RelayAction::default()
    };
    let body = b"Subject: hi\n\n.leading dot\nline\r\n..two\nlast";
    let out = send(
        &relayer(""),
        &action,
        Some(&url),
        &no_auth,
        "bob@far.test",
        body,
    )
    .await;
    assert_eq!(out.status, Status::Ok, "{out:?}");
    assert_eq!(out.stat, "250 2.0.0 queued as 42");
    // The host as 6.8 names it: address and name (the address again without a PTR name).
    assert_eq!(out.relay, "127.0.0.1 (127.0.0.1)");
    assert_eq!(out.source.as_deref(), Some("127.0.0.1"));
    let cmds = sink.commands();
    assert_eq!(
        cmds,
        vec![
            "EHLO out.relay.test",
            "MAIL FROM:<alice@origin.test>",
            "RCPT TO:<bob@far.test>",
            "DATA",
            "QUIT"
        ]
    );
    let data = sink.data.lock().unwrap()[0].clone();
    assert_eq!(
        data,
        b"Subject: hi\r\n\r\n..leading dot\r\nline\r\n...two\r\nlast\r\n.\r\n".to_vec()
    );
    println!(
        "sink received {} bytes: {:?}",
        data.len(),
        String::from_utf8_lossy(&data)
    );
}

#[tokio::test]
async fn mail_from_override_and_null_sender() {
    let (sink, addr) = Sink::default().start("127.0.0.1:0").await.unwrap();
    let url = format!("127.0.0.1:{}", addr.port());
    let action = RelayAction {
        mail_from: Some("bounces@".into()),
        ..RelayAction::default()
    };
    let out = send(
        &relayer(""),
        &action,
        Some(&url),
        &no_auth,
        "b@far.test",
        b"x\n",
    )
    .await;
    assert_eq!(out.status, Status::Ok);
    assert!(
        sink.commands()
            .contains(&"MAIL FROM:<bounces@origin.test>".to_string())
    );
}

#[tokio::test]
async fn permanent_rcpt_refusal_is_permfail_with_the_reply() {
    let sink = Sink {
        rcpt_replies: vec!["550 5.1.1 no such user".into()],
        ..Sink::default()
    };
    let (sink, addr) = sink.start("127.0.0.1:0").await.unwrap();
    let url = format!("smtp://127.0.0.1:{}", addr.port());
    let out = send(
        &relayer(""),
        &RelayAction::default(),
        Some(&url),
        &no_auth,
        "nobody@far.test",
        b"x\n",
    )
    .await;
    assert_eq!(out.status, Status::PermFail);
    assert_eq!(out.stat, "550 5.1.1 no such user");
    assert!(sink.data.lock().unwrap().is_empty());
    assert_eq!(sink.commands().last().map(String::as_str), Some("QUIT"));
}

#[tokio::test]
async fn temporary_refusal_is_retried_by_the_scheduler_and_then_delivered() {
    use smtpd::queue::scheduler::{Action, ScheduleEntry, Scheduler, SchedulerConfig};
    use smtpd::queue::{DeliveryKind, Evpid};
    let sink = Sink {
        rcpt_replies: vec!["451 4.3.0 try later".into()],
        ..Sink::default()
    };
    let (sink, addr) = sink.start("127.0.0.1:0").await.unwrap();
    let url = format!("smtp://127.0.0.1:{}", addr.port());
    let r = relayer("");
    let evpid = Evpid::new(0x1234_5678_0000_0001).unwrap();
    let mut s = Scheduler::new(SchedulerConfig::default());
    let t0 = 1_000_000u64;
    s.insert(ScheduleEntry {
        evpid,
        kind: DeliveryKind::Mta,
        ctime: t0,
        ttl: 0,
        retry: 0,
        last_bounce: 0,
    });
    let mut attempts = 0;
    let mut clock = t0;
    let mut delivered = false;
    for _ in 0..100_000 {
        let due = s.poll(clock, 10);
        if due.iter().any(|a| matches!(a, Action::Deliver { .. })) {
            attempts += 1;
            let out = send(
                &r,
                &RelayAction::default(),
                Some(&url),
                &no_auth,
                "b@far.test",
                b"m\n",
            )
            .await;
            match out.status {
                Status::TempFail => {
                    assert_eq!(out.stat, "451 4.3.0 try later");
                    assert!(s.temp_failure(evpid, clock).is_some());
                }
                Status::Ok => {
                    s.delivered(evpid);
                    delivered = true;
                    break;
                }
                Status::PermFail => panic!("unexpected permanent failure: {out:?}"),
            }
        }
        let next = s.next_wakeup().expect("envelope still scheduled");
        assert!(next > clock, "retry is in the future");
        clock = next;
    }
    assert!(delivered);
    assert_eq!(attempts, 2);
    println!("first retry after {}s", clock - t0);
    assert!(clock > t0);
    assert_eq!(sink.data.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn connection_refused_is_a_temporary_network_error() {
    // A port nothing listens on.
    let port = common::free_port();
    let out = send(
        &relayer(""),
        &RelayAction::default(),
        Some(&format!("smtp://127.0.0.1:{port}")),
        &no_auth,
        "b@far.test",
        b"m\n",
    )
    .await;
    assert_eq!(out.status, Status::TempFail);
    assert_eq!(out.stat, "Network error on destination MXs");
}

#[tokio::test]
async fn bad_smarthost_and_missing_auth_table_are_temporary() {
    let r = relayer("");
    let out = send(
        &r,
        &RelayAction::default(),
        Some("gopher://x"),
        &no_auth,
        "b@far.test",
        b"",
    )
    .await;
    assert_eq!(
        (out.status, out.stat.as_str()),
        (Status::TempFail, "Cannot parse smarthost")
    );
    let out = send(
        &r,
        &RelayAction::default(),
        Some("smtp+tls://lbl@127.0.0.1:9"),
        &no_auth,
        "b@far.test",
        b"",
    )
    .await;
    assert_eq!(
        (out.status, out.stat.as_str()),
        (Status::TempFail, "No auth table for relaying")
    );
}

#[tokio::test]
async fn dns_failures_map_to_permanent_or_temporary() {
    let r = relayer(
        "null.test MX 0 .\n\
         broken.test SERVFAIL\n\
         other.test A 127.0.0.1\n",
    );
    let a = RelayAction::default();
    let out = send(&r, &a, None, &no_auth, "x@nx.test", b"").await;
    assert_eq!(
        (out.status, out.stat.as_str()),
        (Status::PermFail, "Domain does not exist")
    );
    let out = send(&r, &a, None, &no_auth, "x@null.test", b"").await;
    assert_eq!(
        (out.status, out.stat.as_str()),
        (Status::PermFail, "Domain does not accept mail")
    );
    let out = send(&r, &a, None, &no_auth, "x@broken.test", b"").await;
    assert_eq!(
        (out.status, out.stat.as_str()),
        (Status::TempFail, "Temporary failure in MX lookup")
    );
}

#[tokio::test]
async fn mx_routing_tries_exchangers_by_preference_on_port_25() {
    let sink = match Sink::default().start("127.0.0.13:25").await {
        Ok((s, _)) => s,
        Err(e) => {
            common::skip(&format!("cannot bind 127.0.0.13:25: {e}"));
            return;
        }
    };
    // The preferred exchanger refuses connections; the next one is the sink.
    let r = relayer(
        "dest.test MX 20 mx2.dest.test.\n\
         dest.test MX 10 mx1.dest.test.\n\
         mx1.dest.test A 127.0.0.14\n\
         mx2.dest.test A 127.0.0.13\n",
    );
    let out = send(
        &r,
        &RelayAction::default(),
        None,
        &no_auth,
        "carol@dest.test",
        b"hello\n",
    )
    .await;
    assert_eq!(out.status, Status::Ok, "{out:?}");
    assert_eq!(out.relay, "127.0.0.13 (127.0.0.13)");
    assert!(
        sink.commands()
            .contains(&"RCPT TO:<carol@dest.test>".to_string())
    );
    assert_eq!(sink.data.lock().unwrap()[0], b"hello\r\n.\r\n".to_vec());

    // Only the refusing exchanger: a temporary network error.
    let r = relayer("down.test MX 10 mx1.down.test.\nmx1.down.test A 127.0.0.14\n");
    let out = send(
        &r,
        &RelayAction::default(),
        None,
        &no_auth,
        "x@down.test",
        b"",
    )
    .await;
    assert_eq!(
        (out.status, out.stat.as_str()),
        (Status::TempFail, "Network error on destination MXs")
    );
}

#[tokio::test]
async fn starttls_then_auth_plain_with_the_auth_table_entry() {
    let sink = Sink {
        tls: Some(tls_config()),
        auth: true,
        ..Sink::default()
    };
    let (sink, addr) = sink.start("127.0.0.1:0").await.unwrap();
    let url = format!("smtp+tls://lbl@127.0.0.1:{}", addr.port());
    let action = RelayAction {
        tls: Some(true), // tls no-verify
        auth: Some(TableId(0)),
        ..RelayAction::default()
    };
    let auth = |label: &str| (label == "lbl").then(|| "joe:s3cret".to_string());
    let out = send(
        &relayer(""),
        &action,
        Some(&url),
        &auth,
        "b@far.test",
        b"m\n",
    )
    .await;
    assert_eq!(out.status, Status::Ok, "{out:?}");
    let cmds = sink.commands();
    let expected = format!(
        "AUTH PLAIN {}",
        base64::engine::general_purpose::STANDARD.encode(b"\0joe\0s3cret")
    );
    let tls_at = cmds.iter().position(|c| c == "TLS").expect("handshake");
    let auth_at = cmds
        .iter()
        .position(|c| *c == expected)
        .expect("AUTH PLAIN");
    assert_eq!(cmds[..tls_at], ["EHLO relay.test", "STARTTLS"]);
    assert!(tls_at < auth_at);
    assert_eq!(cmds[tls_at + 1], "EHLO relay.test");
    println!("{cmds:?}");

    // smtp+tls:// to a host without STARTTLS: no mail goes out in clear.
    let (plain, addr) = Sink::default().start("127.0.0.1:0").await.unwrap();
    let url = format!("smtp+tls://127.0.0.1:{}", addr.port());
    let out = send(
        &relayer(""),
        &RelayAction::default(),
        Some(&url),
        &no_auth,
        "b@far.test",
        b"m\n",
    )
    .await;
    assert_eq!(out.status, Status::TempFail);
    assert!(!plain.commands().iter().any(|c| c.starts_with("MAIL")));

    // Opportunistic STARTTLS with smtp://.
    let sink2 = Sink {
        tls: Some(tls_config()),
        ..Sink::default()
    };
    let (sink2, addr) = sink2.start("127.0.0.1:0").await.unwrap();
    let url = format!("smtp://127.0.0.1:{}", addr.port());
    let out = send(
        &relayer(""),
        &RelayAction::default(),
        Some(&url),
        &no_auth,
        "b@far.test",
        b"m\n",
    )
    .await;
    assert_eq!(out.status, Status::Ok, "{out:?}");
    assert!(sink2.commands().contains(&"TLS".to_string()));
}

#[tokio::test]
async fn tls_with_verification_refuses_an_unknown_certificate() {
    let sink = Sink {
        tls: Some(tls_config()),
        ..Sink::default()
    };
    let (sink, addr) = sink.start("127.0.0.1:0").await.unwrap();
    let url = format!("smtp://127.0.0.1:{}", addr.port());
    // `tls` without `no-verify`: the self-signed certificate does not pass.
    let action = RelayAction {
        tls: Some(false),
        ..RelayAction::default()
    };
    let out = send(
        &relayer(""),
        &action,
        Some(&url),
        &no_auth,
        "b@far.test",
        b"m\n",
    )
    .await;
    assert_eq!(
        (out.status, out.stat.as_str()),
        (Status::TempFail, "Network error on destination MXs")
    );
    assert!(!sink.commands().iter().any(|c| c.starts_with("MAIL")));
}

#[tokio::test]
async fn address_literal_domains_go_straight_to_the_address() {
    let (sink, addr) = Sink::default().start("127.0.0.1:0").await.unwrap();
    // No DNS at all: the literal needs none.
    let r = relayer("").with_mx_port(addr.port());
    let out = send(
        &r,
        &RelayAction::default(),
        None,
        &no_auth,
        "x@[127.0.0.1]",
        b"m\n",
    )
    .await;
    assert_eq!(out.status, Status::Ok, "{out:?}");
    assert!(
        sink.commands()
            .contains(&"RCPT TO:<x@[127.0.0.1]>".to_string())
    );
    // `tls` makes STARTTLS mandatory on MX routes: this sink offers none.
    let tls = RelayAction {
        tls: Some(true),
        ..RelayAction::default()
    };
    let before = sink.data.lock().unwrap().len();
    let out = send(&r, &tls, None, &no_auth, "x@[127.0.0.1]", b"m\n").await;
    assert_eq!(out.status, Status::TempFail, "{out:?}");
    assert_eq!(sink.data.lock().unwrap().len(), before);
    let out = send(
        &r,
        &RelayAction::default(),
        None,
        &no_auth,
        "x@[not.an.ip]",
        b"m\n",
    )
    .await;
    assert_eq!(out.status, Status::PermFail);
}

#[tokio::test]
async fn one_session_carries_several_transactions_with_per_recipient_results() {
    use smtpd::deliver::relay::{ConnectLimits, Recipient, Transaction};
    let sink = Sink {
        refuse_rcpt: Some("ghost".into()),
        ..Sink::default()
    };
    let (sink, addr) = sink.start("127.0.0.1:0").await.unwrap();
    let url = format!("smtp://127.0.0.1:{}", addr.port());
    let r = relayer("");
    let action = RelayAction::default();
    let hops = r
        .route(&action, Some(&url), "far.test", None)
        .await
        .unwrap();
    let mut s = tokio::time::timeout(
        LIMIT,
        r.connect(&action, &hops, &no_auth, None, ConnectLimits::default()),
    )
    .await
    .unwrap()
    .unwrap_or_else(|o| panic!("{o:?}"));
    let tx = |rcpts: Vec<&'static str>| Transaction {
        msgid: String::new(),
        sender: "alice@origin.test",
        ret: None,
        envid: "",
        rcpts: rcpts
            .into_iter()
            .map(|dest| Recipient {
                dest,
                ..Recipient::default()
            })
            .collect(),
        content: b"x\n",
    };
    let ok = (Status::Ok, "250 2.0.0 queued as 42".to_string());
    let refused = (Status::PermFail, "550 5.1.1 no such user".to_string());
    let out = s
        .transaction(&tx(vec!["a@far.test", "ghost@far.test"]))
        .await;
    assert_eq!(out, vec![ok.clone(), refused.clone()]);
    // Every recipient refused: no DATA, RSET before the next transaction.
    let out = s.transaction(&tx(vec!["ghost@far.test"])).await;
    assert_eq!(out, vec![refused]);
    let out = s.transaction(&tx(vec!["b@far.test"])).await;
    assert_eq!(out, vec![ok]);
    assert_eq!(s.sent(), 2);
    assert!(s.usable());
    s.close().await;
    assert_eq!(
        sink.commands(),
        vec![
            "EHLO relay.test",
            "MAIL FROM:<alice@origin.test>",
            "RCPT TO:<a@far.test>",
            "RCPT TO:<ghost@far.test>",
            "DATA",
            "MAIL FROM:<alice@origin.test>",
            "RCPT TO:<ghost@far.test>",
            "RSET",
            "MAIL FROM:<alice@origin.test>",
            "RCPT TO:<b@far.test>",
            "DATA",
            "QUIT"
        ]
    );
    assert_eq!(sink.connections(), 1);
    assert_eq!(sink.data.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn address_family_restriction_skips_other_addresses() {
    use smtpd::deliver::relay::{ConnectLimits, Family};
    let (sink, addr) = Sink::default().start("127.0.0.1:0").await.unwrap();
    let url = format!("smtp://127.0.0.1:{}", addr.port());
    let r = relayer("");
    let action = RelayAction::default();
    let hops = r
        .route(&action, Some(&url), "far.test", None)
        .await
        .unwrap();
    let only6 = ConnectLimits {
        family: Family::Inet6,
        ..ConnectLimits::default()
    };
    let refused = tokio::time::timeout(LIMIT, r.connect(&action, &hops, &no_auth, None, only6))
        .await
        .unwrap();
    let Err(out) = refused else {
        panic!("an IPv4 smarthost was used under inet6")
    };
    assert_eq!(out.status, Status::TempFail);
    assert_eq!(out.stat, "Address family mismatch on destination MXs");
    assert_eq!(sink.connections(), 0);
    let only4 = ConnectLimits {
        family: Family::Inet4,
        ..ConnectLimits::default()
    };
    let s = tokio::time::timeout(LIMIT, r.connect(&action, &hops, &no_auth, None, only4))
        .await
        .unwrap()
        .unwrap_or_else(|o| panic!("{o:?}"));
    s.close().await;
    assert_eq!(sink.connections(), 1);
}

/// A next hop without any address is a temporary failure with 6.8's words for it.
#[tokio::test]
async fn a_host_without_addresses_is_no_mx_found() {
    let r = relayer("");
    let action = RelayAction::default();
    let out = send(
        &r,
        &action,
        Some("smtp://nowhere.test"),
        &no_auth,
        "b@far.test",
        b"x\n",
    )
    .await;
    assert_eq!(out.status, Status::TempFail);
    assert_eq!(out.stat, "No MX found for destination");
}

#[tokio::test]
async fn a_route_that_never_answered_is_disabled_then_enabled() {
    // A port nothing listens on (yet).
    let port = common::free_port();
    let url = format!("smtp://127.0.0.1:{port}");
    let r = relayer("").with_route_penalty_base(Duration::from_secs(1));
    let action = RelayAction::default();
    let out = send(&r, &action, Some(&url), &no_auth, "b@far.test", b"x\n").await;
    assert_eq!(out.status, Status::TempFail);
    assert_eq!(out.stat, "Network error on destination MXs");
    assert_eq!(
        r.routes_text(),
        vec!["1. [] <-> 127.0.0.1 (127.0.0.1) ND-- nconn=0 nerror=1 penalty=1 timeout=1s"]
    );
    // While disabled, the route is not tried even though a server now listens.
    let (sink, _) = Sink::default()
        .start(&format!("127.0.0.1:{port}"))
        .await
        .unwrap();
    let out = send(&r, &action, Some(&url), &no_auth, "b@far.test", b"x\n").await;
    assert_eq!(out.stat, "Network error on destination MXs");
    assert_eq!(out.session, smtpd::deliver::relay::NO_SESSION);
    assert_eq!(sink.connections(), 0);
    // Enabled again after the penalty, and then forgotten, as 6.8 frees a route nothing
    // holds (no session, no penalty left, no pause: this relayer has none).
    let t = std::time::Instant::now();
    while r.routes_text().iter().any(|l| l.contains(" ND-- ")) {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{:?}",
            r.routes_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(r.routes_text(), Vec::<String>::new());
    let out = send(&r, &action, Some(&url), &no_auth, "b@far.test", b"x\n").await;
    assert_eq!(out.status, Status::Ok, "{out:?}");
    assert_eq!(sink.connections(), 1);
    assert_eq!(r.routes_text(), Vec::<String>::new());
}

#[tokio::test]
async fn a_session_that_breaks_fails_its_transaction_temporarily() {
    use smtpd::deliver::relay::{ConnectLimits, Recipient, Transaction};
    let sink = Sink {
        hang_up_after: Some(1),
        ..Sink::default()
    };
    let (_sink, addr) = sink.start("127.0.0.1:0").await.unwrap();
    let url = format!("smtp://127.0.0.1:{}", addr.port());
    let r = relayer("");
    let action = RelayAction::default();
    let hops = r
        .route(&action, Some(&url), "far.test", None)
        .await
        .unwrap();
    let mut s = tokio::time::timeout(
        LIMIT,
        r.connect(&action, &hops, &no_auth, None, ConnectLimits::default()),
    )
    .await
    .unwrap()
    .unwrap_or_else(|o| panic!("{o:?}"));
    let tx = Transaction {
        msgid: String::new(),
        sender: "alice@origin.test",
        ret: None,
        envid: "",
        rcpts: vec![
            Recipient {
                dest: "a@far.test",
                ..Recipient::default()
            },
            Recipient {
                dest: "b@far.test",
                ..Recipient::default()
            },
        ],
        content: b"x\n",
    };
    let first = s.transaction(&tx).await;
    assert!(first.iter().all(|(st, _)| *st == Status::Ok), "{first:?}");
    let second = s.transaction(&tx).await;
    let closed = (
        Status::TempFail,
        "Connection closed unexpectedly".to_string(),
    );
    assert_eq!(second, vec![closed.clone(), closed]);
    assert!(!s.usable());
    assert_eq!(s.sent(), 1);
    s.close().await;
}
