//! A short, bounded, deterministic run of every fuzz target's entry point on the stable
//! toolchain, so that CI exercises them on each change (the coverage-guided runs in `fuzz/`
//! need nightly and go much further). Each target gets real seeds — corpus configurations,
//! SMTP dialogues, table files, makemap databases, addresses — and a fixed number of
//! mutations of them from a seeded generator: byte flips, insertions of interesting bytes
//! and keywords, deletions, duplications and splices. Any panic fails the test and prints
//! the seed and the iteration, so a failure reproduces exactly.

use std::path::Path;

/// Mutations per seed file; the whole test stays within a few seconds in a debug build.
const ROUNDS: usize = 200;

/// A small, seeded xorshift generator: the same sequence on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

const TOKENS: &[&[u8]] = &[
    b"\r\n",
    b"\n",
    b"\0",
    b"\xff",
    b"<",
    b">",
    b"@",
    b"\"",
    b"\\",
    b"{",
    b"}",
    b"$",
    b"%{rcpt}",
    b",",
    b":",
    b"=",
    b"MAIL FROM:<a@b>",
    b"RCPT TO:<@x,@y:u@v>",
    b"DATA\r\n",
    b"\r\n.\r\n",
    b"BDAT 10 LAST\r\n",
    b"AUTH PLAIN AGFhAGI=\r\n",
    b"STARTTLS\r\n",
    b"listen on ",
    b"table t { a = b }",
    b"match from any for any action ",
    b"action \"x\" maildir ",
    b"include \"",
    b"SRS0=",
    b"|/bin/sh",
    b":include:",
    b"smtps://u@[::1]:465",
];

fn mutate(rng: &mut Rng, seed: &[u8], others: &[Vec<u8>]) -> Vec<u8> {
    let mut data = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(data.len() + 1);
        match rng.below(6) {
            0 if !data.is_empty() => {
                let i = rng.below(data.len());
                data[i] ^= 1 << rng.below(8);
            }
            1 => {
                let t = TOKENS[rng.below(TOKENS.len())];
                data.splice(at..at, t.iter().copied());
            }
            2 if !data.is_empty() => {
                let end = (at + rng.below(64)).min(data.len());
                data.drain(at.min(end)..end);
            }
            3 if !data.is_empty() => {
                let start = rng.below(data.len());
                let end = (start + rng.below(256)).min(data.len());
                let piece = data[start..end].to_vec();
                data.splice(at..at, piece);
            }
            4 if !others.is_empty() => {
                let other = &others[rng.below(others.len())];
                let start = rng.below(other.len() + 1);
                data.truncate(at);
                data.extend_from_slice(&other[start..]);
            }
            _ => data.insert(at, rng.next() as u8),
        }
    }
    data.truncate(256 * 1024);
    data
}

/// Runs `target` on every seed and `ROUNDS` mutations of each.
fn run(name: &str, seeds: &[Vec<u8>], target: impl Fn(&[u8])) -> usize {
    assert!(!seeds.is_empty(), "{name}: no seeds");
    let mut rng = Rng(0x5eed_0000_0000_0001 ^ name.len() as u64);
    let mut runs = 0;
    for (i, seed) in seeds.iter().enumerate() {
        target(seed);
        runs += 1;
        for round in 0..ROUNDS {
            let state = rng.0;
            let input = mutate(&mut rng, seed, seeds);
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| target(&input)));
            assert!(
                outcome.is_ok(),
                "{name}: panic on seed {i} round {round} (generator state {state:#x}); input: {:?}",
                String::from_utf8_lossy(&input)
            );
            runs += 1;
        }
    }
    println!("{name}: {runs} inputs, no panic");
    runs
}

fn files_in(dir: &Path, limit: usize) -> Vec<Vec<u8>> {
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    paths.sort();
    paths
        .into_iter()
        .filter(|p| p.is_file())
        .take(limit)
        .filter_map(|p| std::fs::read(p).ok())
        .collect()
}

fn dialogues() -> Vec<Vec<u8>> {
    [
        "EHLO client.example\r\nMAIL FROM:<a@b.example> SIZE=100 BODY=8BITMIME\r\nRCPT TO:<c@d.example> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;c@d.example\r\nDATA\r\nSubject: x\r\n\r\n..dot\r\nbody\r\n.\r\nQUIT\r\n",
        "HELO x\r\nMAIL FROM:<>\r\nRCPT TO:<postmaster>\r\nRSET\r\nNOOP\r\nVRFY root\r\nHELP\r\nQUIT\r\n",
        "EHLO x\r\nAUTH LOGIN\r\ndXNlcg==\r\ncGFzcw==\r\nAUTH PLAIN\r\n*\r\nSTARTTLS\r\n",
        "EHLO x\r\nMAIL FROM:<\"quoted local\"@b.example> RET=HDRS ENVID=abc\r\nRCPT TO:<u%v@w.example>\r\nRCPT TO:<@r1,@r2:u@[127.0.0.1]>\r\nBDAT 5 LAST\r\nhello",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

#[test]
fn smtp_command_target() {
    let mut seeds = dialogues();
    seeds.extend(dialogues().iter().flat_map(|d| {
        d.split(|&b| b == b'\n')
            .map(|l| l.to_vec())
            .collect::<Vec<_>>()
    }));
    run(
        "smtp_command",
        &seeds,
        smtpd::smtp::command::fuzz_command_line,
    );
}

#[test]
fn smtp_data_target() {
    let seeds: Vec<Vec<u8>> = vec![
        b"Subject: a\r\n\r\nbody\r\n.\r\n".to_vec(),
        b"From: a\r\nX-Long: "
            .iter()
            .copied()
            .chain(std::iter::repeat_n(b'x', 1200))
            .chain(*b"\r\n\r\n.\r\n")
            .collect(),
        b"..\r\n...\r\n.x\r\n\r\n.\r\n".to_vec(),
        b"no final newline".to_vec(),
        b"bare\nnewlines\n.\n".to_vec(),
    ];
    run("smtp_data", &seeds, smtpd::smtp::data::fuzz_data);
}

#[test]
fn smtp_session_target() {
    run(
        "smtp_session",
        &dialogues(),
        smtpd::smtp::session::fuzz_session,
    );
}

#[test]
fn table_file_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut seeds: Vec<Vec<u8>> = vec![
        b"# aliases\nroot: foo, bar@example.com\nabuse postmaster\n\"q u\" x\n".to_vec(),
        b"example.com\n*.example.org\n192.0.2.0/24\n::1\n".to_vec(),
        b"user $2b$08$abcdefghijklmnopqrstuv\n".to_vec(),
    ];
    seeds.extend(
        files_in(&root.join("tests/data"), 16)
            .into_iter()
            .filter(|f| f.len() < 64 * 1024),
    );
    run("table_file", &seeds, |data| {
        let _ = smtpd::table::file::parse("fuzz", &String::from_utf8_lossy(data));
        let _ = smtpd::table::db::parse(data);
    });
}

#[test]
fn address_target() {
    let seeds: Vec<Vec<u8>> = [
        "user@example.com",
        "<user@example.com> SIZE=10",
        "<>",
        "<@a,@b:user@[192.0.2.1]>",
        "\"a b\"@example.com",
        "root, |/usr/bin/procmail -f-, /var/mail/x, :include:/etc/list, \"a,b\"@c",
        "user%other@relay!host",
        "SRS0=HHHH=TT=example.org=user@example.com",
        "smtp+tls://label@mx.example.com:587",
        "lmtp://[::1]:24",
        "#comment\n\\\nline \\\n continued\n",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    run("address", &seeds, smtpd::smtp::address::fuzz_address);
}

/// Self-contained configurations (no files, no certificates) that the check accepts, so that
/// many mutations of them are accepted too and go through the print round trip.
const CONFIGS: &[&str] = &[
    "table aliases { root = foo, abuse = root }\ntable domains { \"example.org\", \"*.example.org\" }\naction \"local\" maildir \"/var/vmail/%{rcpt}\" junk alias <aliases>\naction \"out\" relay\nmatch from any for domain <domains> action \"local\"\nmatch from local for any action \"out\"\n",
    "listen on lo port 2525\nfilter f1 phase connect match !rdns disconnect \"550 no rDNS\"\nfilter f2 phase mail-from match mail-from regex \"^spam\" junk\nfilter chain chain { f1, f2 }\nlisten on 127.0.0.1 filter chain\naction \"m\" mbox\nmatch for local action \"m\"\n",
    "max-message-size 10M\nqueue ttl 2d\nsmtp max-message-size 1M\nmta max-deferred 50\ntable src { 192.0.2.0/24, 10.0.0.0/8 }\naction \"d\" mda \"/usr/bin/procmail -f %{sender}\" user nobody\nmatch from src <src> for any action \"d\"\nmatch from any for any reject\n",
    "v = \"example.com\"\naction \"r\" relay host \"smtp://mx.$v:25\" helo mx.example.com\naction \"l\" lmtp \"/var/run/lmtp.sock\" rcpt-to\nmatch from any for domain $v action \"l\"\nmatch auth from any for any action \"r\"\n",
];

#[test]
fn config_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut seeds = files_in(&root.join("tests/corpus/real"), 6);
    seeds.extend(files_in(&root.join("tests/corpus/broken"), 4));
    seeds.extend(files_in(&root.join("etc"), 4));
    seeds.extend(CONFIGS.iter().map(|c| c.as_bytes().to_vec()));
    let accepted_ref = std::cell::Cell::new(0usize);
    run("config", &seeds, |data| {
        if smtpd::config::fuzz_config(data) {
            accepted_ref.set(accepted_ref.get() + 1);
        }
    });
    let accepted = accepted_ref.get();
    println!("config: {accepted} inputs accepted and printed back to an equal configuration");
    // The mutations must not all be rejected, or the print round trip is never exercised.
    assert!(
        accepted > 4 * CONFIGS.len(),
        "only {accepted} accepted inputs"
    );
}
