//! smtpctl(8): argument parsing and wiring only.
//!
//! Commands may be abbreviated to an unambiguous prefix, as OpenSMTPD's smtpctl allows
//! (`sh q` is `show queue`). `encrypt` runs here; every other command is a request on the
//! daemon's control socket (see `smtpd::control::protocol`). `show queue` reads the spool
//! directly when the daemon is not running. Run as `mailq`, it is `smtpctl show queue`; run as
//! `makemap` or `newaliases`, it builds `db:` tables (`smtpd::table::makemap`).

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use smtpd::control::protocol::{Reply, Request};
use smtpd::table::credentials;

const USAGE: &str =
    "usage: smtpctl [-s socket | --spool dir] [--resolv-conf file] command [argument ...]";

/// The commands, in the order OpenSMTPD 6.8's smtpctl installs them: `possibilities are:`
/// lists the words valid at a position in this order. A word in angle brackets takes an
/// argument of that kind.
const PATTERNS: &[&str] = &[
    "discover <evpid>",
    "discover <msgid>",
    "pause mta from <addr> for <str>",
    "resume mta from <addr> for <str>",
    "show mta paused",
    "log brief",
    "log verbose",
    "monitor",
    "pause envelope <evpid>",
    "pause envelope <msgid>",
    "pause envelope all",
    "pause mda",
    "pause mta",
    "pause smtp",
    "profile <str>",
    "remove <evpid>",
    "remove <msgid>",
    "remove all",
    "resume envelope <evpid>",
    "resume envelope <msgid>",
    "resume envelope all",
    "resume mda",
    "resume mta",
    "resume route <routeid>",
    "resume smtp",
    "schedule <msgid>",
    "schedule <evpid>",
    "schedule all",
    "show envelope <evpid>",
    "show hoststats",
    "show message <msgid>",
    "show message <evpid>",
    "show queue",
    "show queue <msgid>",
    "show hosts",
    "show relays",
    "show routes",
    "show stats",
    "show status",
    "trace <str>",
    "unprofile <str>",
    "untrace <str>",
    "update table <str>",
    "encrypt",
    "encrypt <str>",
    "spf walk",
];

/// One word of the command tree.
struct Node {
    token: &'static str,
    children: Vec<usize>,
    /// A command ends here.
    command: bool,
}

/// The tree of [`PATTERNS`] (node 0 is the root).
fn command_tree() -> Vec<Node> {
    let mut nodes = vec![Node {
        token: "",
        children: Vec::new(),
        command: false,
    }];
    for pattern in PATTERNS {
        let mut at = 0;
        for token in pattern.split(' ') {
            let found = nodes[at]
                .children
                .iter()
                .copied()
                .find(|&c| nodes[c].token == token);
            at = match found {
                Some(c) => c,
                None => {
                    nodes.push(Node {
                        token,
                        children: Vec::new(),
                        command: false,
                    });
                    let new = nodes.len() - 1;
                    nodes[at].children.push(new);
                    new
                }
            };
        }
        nodes[at].command = true;
    }
    nodes
}

/// Whether `arg` is a word of the node `token` (a keyword itself, or an argument of its
/// kind), as OpenSMTPD's parser checks it.
fn accepts(token: &str, arg: &str) -> bool {
    let hex = |len: usize| {
        arg.len() == len
            && u64::from_str_radix(arg, 16).is_ok_and(|v| v != 0 && (len != 8 || v <= 0xffff_ffff))
    };
    match token {
        "<str>" => true,
        "<evpid>" => hex(16),
        "<msgid>" => hex(8),
        "<routeid>" => arg.parse::<i64>().is_ok_and(|n| n >= 1),
        "<addr>" => arg
            .split_once('%')
            .map_or(arg, |(a, _)| a)
            .parse::<std::net::IpAddr>()
            .is_ok(),
        keyword => keyword == arg,
    }
}

/// Resolve the command line as OpenSMTPD's smtpctl does: each word is the first word of
/// the tree it is (or whose kind it has), else the only keyword it begins; the canonical
/// words (keywords spelled out, arguments as given). `Err` carries the exit code after
/// OpenSMTPD's message: `possibilities are:` and the valid continuations, or `invalid
/// command` where none is, status 255.
fn resolve(args: &[String]) -> Result<Vec<String>, ExitCode> {
    let tree = command_tree();
    let mut at = 0;
    let mut path: Vec<&str> = Vec::new();
    let mut out = Vec::new();
    let mut failed = false;
    for arg in args {
        let node = &tree[at];
        let exact = node
            .children
            .iter()
            .copied()
            .find(|&c| accepts(tree[c].token, arg));
        let chosen = exact.or_else(|| {
            let mut prefixed = node.children.iter().copied().filter(|&c| {
                let t = tree[c].token;
                !t.starts_with('<') && t.starts_with(arg.as_str())
            });
            match (prefixed.next(), prefixed.next()) {
                (Some(c), None) => Some(c),
                _ => None,
            }
        });
        let Some(c) = chosen else {
            failed = true;
            break;
        };
        at = c;
        let token = tree[c].token;
        path.push(token);
        out.push(if token.starts_with('<') {
            arg.clone()
        } else {
            token.to_string()
        });
    }
    if !failed && tree[at].command {
        return Ok(out);
    }
    let node = &tree[at];
    if node.children.is_empty() {
        eprintln!("invalid command");
    } else {
        eprintln!("possibilities are:");
        for &c in &node.children {
            let mut words = path.clone();
            words.push(tree[c].token);
            eprintln!("{}", words.join(" "));
        }
    }
    Err(ExitCode::from(255))
}

fn exit_status(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

fn main() -> ExitCode {
    let mut args: Vec<OsString> = std::env::args_os().skip(1).collect();
    // `mailq` (a link to smtpctl) is `smtpctl show queue`.
    let invoked = std::env::args_os().next().unwrap_or_default();
    // `makemap` and `newaliases` (links to smtpctl) build db: tables.
    let name = std::path::Path::new(&invoked)
        .file_name()
        .unwrap_or_default();
    let program = invoked.to_string_lossy();
    if name == "makemap" {
        return exit_status(smtpd::table::makemap::makemap_main(&program, &args));
    }
    if name == "newaliases" {
        return exit_status(smtpd::table::makemap::newaliases_main(&program, &args));
    }
    if std::path::Path::new(&invoked)
        .file_name()
        .is_some_and(|n| n == "mailq")
    {
        args.extend(["show".into(), "queue".into()]);
    }
    // `encrypt` takes raw bytes: handle it before any text conversion.
    if let Some(first) = args.first() {
        let c = first.as_bytes();
        if !c.is_empty() && b"encrypt".starts_with(c) {
            return encrypt(&args[1..]);
        }
    }
    let mut socket: Option<PathBuf> = None;
    let mut spool: Option<PathBuf> = None;
    let mut resolv_conf = PathBuf::from("/etc/resolv.conf");
    let mut i = 0;
    while i < args.len() {
        match args[i].as_bytes() {
            b"--resolv-conf" => {
                let Some(v) = args.get(i + 1) else {
                    eprintln!("{USAGE}");
                    return ExitCode::from(1);
                };
                resolv_conf = PathBuf::from(v);
                i += 2;
            }
            b"-s" | b"--spool" => {
                let Some(v) = args.get(i + 1) else {
                    eprintln!("{USAGE}");
                    return ExitCode::from(1);
                };
                if args[i].as_bytes() == b"-s" {
                    socket = Some(PathBuf::from(v));
                } else {
                    spool = Some(PathBuf::from(v));
                }
                i += 2;
            }
            _ => break,
        }
    }
    let rest = &args[i..];
    if let Some(first) = rest.first() {
        let c = first.as_bytes();
        if !c.is_empty() && b"encrypt".starts_with(c) {
            return encrypt(&rest[1..]);
        }
    }
    let words: Vec<String> = rest
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let canonical = match resolve(&words) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let socket_path = socket
        .clone()
        .unwrap_or_else(|| smtpd::control::socket_path(spool.as_deref()));
    if canonical == ["monitor"] {
        return monitor(&socket_path);
    }
    if canonical == ["spf", "walk"] {
        return spf_walk(&resolv_conf);
    }
    // `show queue MSGID`: the queue's lines of that message.
    let (canonical, only) = match canonical.as_slice() {
        [show, queue, msgid] if show == "show" && queue == "queue" => (
            vec![show.clone(), queue.clone()],
            Some(msgid.to_ascii_lowercase()),
        ),
        _ => (canonical, None),
    };
    let request = match Request::parse(&canonical.join(" ")) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("smtpctl: {e}");
            return ExitCode::from(1);
        }
    };
    let socket = socket.unwrap_or_else(|| smtpd::control::socket_path(spool.as_deref()));
    match ask(&socket, &request) {
        Ok(reply) if reply.is_need_root() => {
            eprintln!("smtpctl: need root privileges");
            ExitCode::from(1)
        }
        Ok(reply) => {
            match &only {
                Some(_) => reply
                    .text
                    .lines()
                    .filter(|l| of_message(l, only.as_deref()))
                    .for_each(|l| println!("{l}")),
                None => print!("{}", reply.text),
            }
            let _ = std::io::stdout().flush();
            if reply.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(_) if request == Request::ShowQueue => offline_queue(spool, only.as_deref()),
        Err(_) => {
            eprintln!("smtpctl: smtpd doesn't seem to be running");
            ExitCode::from(1)
        }
    }
}

/// `monitor`: every second, the counters' changes, a header every 25 lines; until the
/// daemon goes away (or the user stops it).
fn monitor(socket: &std::path::Path) -> ExitCode {
    use smtpd::control::show::{MONITOR_HEADER, monitor_line, parse_stats};
    let mut prev = std::collections::HashMap::new();
    let mut lines = 0u64;
    loop {
        let stats = match ask(socket, &Request::Digest) {
            Ok(r) if r.ok => parse_stats(&r.text),
            _ if lines == 0 => {
                eprintln!("smtpctl: smtpd doesn't seem to be running");
                return ExitCode::from(1);
            }
            _ => return ExitCode::SUCCESS,
        };
        if lines.is_multiple_of(25) {
            print!("{MONITOR_HEADER}");
        }
        print!("{}", monitor_line(&prev, &stats));
        if std::io::stdout().flush().is_err() {
            return ExitCode::SUCCESS;
        }
        prev = stats;
        lines += 1;
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// `spf walk`: the addresses and networks the SPF records of the domains read from
/// standard input allow, one per line (no daemon needed).
fn spf_walk(resolv_conf: &std::path::Path) -> ExitCode {
    use std::io::BufRead;
    let resolver =
        match smtpd::dns::HickoryResolver::from_file(resolv_conf, &smtpd::dns::HostsFile::System) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("smtpctl: {e}");
                return ExitCode::from(1);
            }
        };
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        eprintln!("smtpctl: cannot start the resolver");
        return ExitCode::from(1);
    };
    let domains: Vec<String> = std::io::stdin()
        .lock()
        .lines()
        .map_while(Result::ok)
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let walk = runtime.block_on(async {
        let mut walk = smtpd::dns::spf::Walk::new(&resolver);
        for d in &domains {
            walk.domain(d).await;
        }
        (walk.found, walk.failed)
    });
    let mut out = std::io::stdout().lock();
    for line in &walk.0 {
        if writeln!(out, "{line}").is_err() {
            return ExitCode::from(1);
        }
    }
    for d in &walk.1 {
        eprintln!("smtpctl: {d}: temporary DNS failure, its records are missing");
    }
    ExitCode::SUCCESS
}

/// One request, one reply over the control socket.
fn ask(socket: &std::path::Path, request: &Request) -> std::io::Result<Reply> {
    let mut s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(format!("{}\n", request.line()).as_bytes())?;
    let mut bytes = Vec::new();
    s.read_to_end(&mut bytes)?;
    Reply::decode(&bytes)
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "malformed reply"))
}

/// Whether a `show queue` line is one `show queue MSGID` shows: every line without a
/// message id, else the lines of that message (the envelope id comes first).
fn of_message(line: &str, only: Option<&str>) -> bool {
    only.is_none_or(|msgid| line.starts_with(msgid))
}

/// `show queue` without a daemon: the envelopes on disk, state `offline`. An envelope
/// sealed by `queue encryption` cannot be read without the daemon's key: as 6.8, a
/// warning for each one (`offline encrypted queue is not supported yet`) and the others.
fn offline_queue(spool: Option<PathBuf>, only: Option<&str>) -> ExitCode {
    let root = spool.unwrap_or_else(|| PathBuf::from(smtpd::queue::DEFAULT_SPOOL));
    match smtpd::queue::Spool::offline_envelopes(&root) {
        Ok((mut list, unreadable)) => {
            for e in &unreadable {
                match e {
                    smtpd::queue::QueueError::Io { op: "decrypt", .. } => {
                        eprintln!("smtpctl: offline encrypted queue is not supported yet")
                    }
                    // Nothing is moved from here: the daemon does that at its next start.
                    smtpd::queue::QueueError::Corrupt { path, reason } => {
                        eprintln!("smtpctl: corrupt envelope {}: {reason}", path.display())
                    }
                    other => eprintln!("smtpctl: {other}"),
                }
            }
            list.sort_by_key(|e| e.id);
            let mut out = std::io::stdout().lock();
            for e in &list {
                let line = smtpd::control::show::queue_line(e, None, 0);
                if of_message(&line, only) {
                    let _ = writeln!(out, "{line}");
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("smtpctl: {}: {e}", root.display());
            ExitCode::from(1)
        }
    }
}

/// `smtpctl encrypt [string]`.
fn encrypt(args: &[OsString]) -> ExitCode {
    let result = match args {
        [] => credentials::encrypt_lines(std::io::stdin().lock(), std::io::stdout().lock()),
        [password] => credentials::encrypt(password.as_bytes()).and_then(|hash| {
            let mut out = std::io::stdout().lock();
            writeln!(out, "{hash}")
                .and_then(|()| out.flush())
                .map_err(|e| credentials::EncryptError(e.to_string()))
        }),
        _ => {
            eprintln!("usage: smtpctl encrypt [string]");
            return ExitCode::from(1);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("smtpctl: encrypt: {e}");
            ExitCode::from(1)
        }
    }
}
