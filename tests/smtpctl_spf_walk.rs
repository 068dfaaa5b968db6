//! `smtpctl spf walk` against a real DNS server (hickory-server on a loopback port, named
//! through smtpctl's `--resolv-conf`): the domains on standard input, their includes and
//! redirects, `a` and `mx` terms resolved, one address or network per line.

mod common;

use std::process::Command;

const ZONE: &str = r#"
$ORIGIN spf.test.
$TTL 60
@        IN SOA ns.spf.test. hostmaster.spf.test. 1 3600 600 86400 60
@        IN NS  ns.spf.test.
ns       IN A   127.0.0.1
@        IN TXT "v=spf1 ip4:192.0.2.0/24 include:_net.spf.test -ip4:198.51.100.1 ~all"
@        IN TXT "some-verification=abc"
_net     IN TXT "v=spf1 ip6:2001:db8::/32 a mx redirect=other.spf.test"
_net     IN A   203.0.113.5
_net     IN MX  10 mx.spf.test.
mx       IN A   203.0.113.25
mx       IN AAAA 2001:db8::25
other    IN TXT "v=spf1 include:spf.test +ip4:198.51.100.7 ?ip4:10.0.0.1 -all"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spf_walk_follows_includes_and_resolves_a_and_mx() {
    let (_dns, addr) = common::loopback_dns(ZONE).await;
    let dir = tempfile::tempdir().unwrap();
    let resolv = dir.path().join("resolv.conf");
    std::fs::write(
        &resolv,
        format!("nameserver {addr}\noptions timeout:2 attempts:2\n"),
    )
    .unwrap();
    let out = tokio::task::spawn_blocking(move || {
        common::run_with_input(
            Command::new(env!("CARGO_BIN_EXE_smtpctl"))
                .arg("--resolv-conf")
                .arg(&resolv)
                .args(["spf", "walk"]),
            b"SPF.test\n\n# a comment\nnone.spf.test\n",
        )
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        text,
        "192.0.2.0/24\n2001:db8::/32\n203.0.113.5\n203.0.113.25\n2001:db8::25\n198.51.100.7\n"
    );
}
