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

/// A word the command line may abbreviate, and the words that may follow it.
struct Word {
    name: &'static str,
    next: Next,
}

/// What follows a word.
enum Next {
    /// The command is complete.
    End,
    /// One of these words.
    Words(&'static [Word]),
    /// A free argument (an id, a trace category), named for the error text.
    Argument(&'static str),
    /// The command may end here, or go on with one of these words.
    EndOr(&'static [Word]),
    /// A free argument, then one of these words.
    ArgumentThen(&'static str, &'static [Word]),
}

const ENVELOPE: Word = Word {
    name: "envelope",
    next: Next::Argument("<evpid>|<msgid>|all"),
};
const MDA: Word = Word {
    name: "mda",
    next: Next::End,
};
/// `pause|resume mta from <addr> for <domain>`.
const MTA: Word = Word {
    name: "mta",
    next: Next::EndOr(&[Word {
        name: "from",
        next: Next::ArgumentThen(
            "<addr>",
            &[Word {
                name: "for",
                next: Next::Argument("<domain>"),
            }],
        ),
    }]),
};
const SMTP: Word = Word {
    name: "smtp",
    next: Next::End,
};

/// What `pause` takes.
const AGENTS: &[Word] = &[ENVELOPE, MDA, MTA, SMTP];

/// What `resume` takes: the agents of `pause`, and a route.
const RESUMABLE: &[Word] = &[
    ENVELOPE,
    MDA,
    MTA,
    Word {
        name: "route",
        next: Next::Argument("<routeid>"),
    },
    SMTP,
];

const COMMANDS: &[Word] = &[
    Word {
        name: "encrypt",
        next: Next::End,
    },
    Word {
        name: "discover",
        next: Next::Argument("<evpid>|<msgid>"),
    },
    Word {
        name: "log",
        next: Next::Words(&[
            Word {
                name: "brief",
                next: Next::End,
            },
            Word {
                name: "verbose",
                next: Next::End,
            },
        ]),
    },
    Word {
        name: "monitor",
        next: Next::End,
    },
    Word {
        name: "pause",
        next: Next::Words(AGENTS),
    },
    Word {
        name: "profile",
        next: Next::Argument("<str>"),
    },
    Word {
        name: "remove",
        next: Next::Argument("<evpid>|<msgid>|all"),
    },
    Word {
        name: "resume",
        next: Next::Words(RESUMABLE),
    },
    Word {
        name: "schedule",
        next: Next::Argument("<evpid>|<msgid>|all"),
    },
    Word {
        name: "show",
        next: Next::Words(&[
            Word {
                name: "envelope",
                next: Next::Argument("<evpid>"),
            },
            Word {
                name: "hosts",
                next: Next::End,
            },
            Word {
                name: "hoststats",
                next: Next::End,
            },
            Word {
                name: "message",
                next: Next::Argument("<evpid>|<msgid>"),
            },
            Word {
                name: "mta",
                next: Next::Words(&[Word {
                    name: "paused",
                    next: Next::End,
                }]),
            },
            Word {
                name: "queue",
                next: Next::End,
            },
            Word {
                name: "relays",
                next: Next::End,
            },
            Word {
                name: "routes",
                next: Next::End,
            },
            Word {
                name: "stats",
                next: Next::End,
            },
            Word {
                name: "status",
                next: Next::End,
            },
        ]),
    },
    Word {
        name: "spf",
        next: Next::Words(&[Word {
            name: "walk",
            next: Next::End,
        }]),
    },
    Word {
        name: "trace",
        next: Next::Argument("<category>"),
    },
    Word {
        name: "untrace",
        next: Next::Argument("<category>"),
    },
    Word {
        name: "unprofile",
        next: Next::Argument("<str>"),
    },
    Word {
        name: "update",
        next: Next::Words(&[Word {
            name: "table",
            next: Next::Argument("<name>"),
        }]),
    },
];

/// OpenSMTPD's answer to a word that matches nothing (or several things): the valid
/// words at that position, exit status 255.
fn possibilities(words: &[Word]) -> ExitCode {
    eprintln!("possibilities are:");
    for w in words {
        eprintln!("{}", w.name);
    }
    ExitCode::from(255)
}

/// Resolve abbreviations into the canonical words; `Err` carries the exit code.
fn resolve(args: &[String]) -> Result<Vec<String>, ExitCode> {
    let mut out = Vec::new();
    let mut level = COMMANDS;
    let mut i = 0;
    loop {
        let Some(given) = args.get(i) else {
            return Err(possibilities(level));
        };
        let exact = level.iter().find(|w| w.name == given);
        let matches: Vec<&Word> = level
            .iter()
            .filter(|w| !given.is_empty() && w.name.starts_with(given.as_str()))
            .collect();
        let word = match (exact, matches.as_slice()) {
            (Some(w), _) => w,
            (None, [w]) => *w,
            _ => return Err(possibilities(level)),
        };
        out.push(word.name.to_string());
        i += 1;
        match &word.next {
            Next::End => {
                if word.name == "encrypt" {
                    // Its optional argument is free text.
                    out.extend(args[i..].iter().cloned());
                    return Ok(out);
                }
                if i < args.len() {
                    eprintln!("smtpctl: too many arguments");
                    eprintln!("{USAGE}");
                    return Err(ExitCode::from(1));
                }
                return Ok(out);
            }
            Next::Words(next) => level = next,
            Next::EndOr(next) => {
                if i == args.len() {
                    return Ok(out);
                }
                level = next;
            }
            Next::ArgumentThen(what, next) => {
                let Some(arg) = args.get(i) else {
                    eprintln!("smtpctl: {} needs one argument: {what}", word.name);
                    eprintln!("{USAGE}");
                    return Err(ExitCode::from(1));
                };
                out.push(arg.clone());
                i += 1;
                level = next;
            }
            Next::Argument(what) => {
                let (Some(arg), true) = (args.get(i), args.len() == i + 1) else {
                    eprintln!("smtpctl: {} needs one argument: {what}", word.name);
                    eprintln!("{USAGE}");
                    return Err(ExitCode::from(1));
                };
                out.push(arg.clone());
                return Ok(out);
            }
        }
    }
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
    if rest.is_empty() {
        eprintln!("{USAGE}");
        return ExitCode::from(1);
    }
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
    let request = match Request::parse(&canonical.join(" ")) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("smtpctl: {e}");
            return ExitCode::from(1);
        }
    };
    let socket = socket.unwrap_or_else(|| smtpd::control::socket_path(spool.as_deref()));
    match ask(&socket, &request) {
        Ok(reply) => {
            print!("{}", reply.text);
            let _ = std::io::stdout().flush();
            if reply.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(_) if request == Request::ShowQueue => offline_queue(spool),
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

/// `show queue` without a daemon: the envelopes on disk, state `offline`. An envelope
/// sealed by `queue encryption` cannot be read without the daemon's key: as 6.8, a
/// warning for each one (`offline encrypted queue is not supported yet`) and the others.
fn offline_queue(spool: Option<PathBuf>) -> ExitCode {
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
                let _ = writeln!(out, "{}", smtpd::control::show::queue_line(e, None, 0));
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
