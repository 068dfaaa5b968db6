//! The smtpd.conf language: lexer, PEG grammar, checks, and the checked configuration.
//!
//! `check` runs exactly the validation a start-up runs; `smtpd -n` is a thin wrapper around it.

pub mod builtin;
pub mod diag;
pub mod hints;
pub mod lexer;
pub mod model;
pub mod parse;
pub mod print;
pub mod system;

use diag::Diagnostics;
use model::Config;
use system::System;

/// Result of reading a configuration.
pub struct Checked {
    /// The configuration, when it has no errors.
    pub config: Option<Config>,
    pub diagnostics: Diagnostics,
}

/// Read, check and load everything `path` names (tables, certificates), as start-up does.
pub fn check(path: &str, options: &parse::Options, system: &dyn System) -> Checked {
    run(options, system, |p| p.parse_file(path))
}

/// The same check on text in memory.
pub fn check_text(
    name: &str,
    text: &[u8],
    options: &parse::Options,
    system: &dyn System,
) -> Checked {
    run(options, system, |p| p.parse_text(name, text))
}

fn run(
    options: &parse::Options,
    system: &dyn System,
    go: impl FnOnce(&mut parse::Parser) -> Result<(), diag::Fatal>,
) -> Checked {
    let hostname = options.hostname.clone().unwrap_or_else(system::server_name);
    let mut p = parse::Parser::new(system, hostname);
    p.define_macros(&options.defines);
    if go(&mut p).is_err() {
        let (_, diagnostics) = p.finish();
        return Checked {
            config: None,
            diagnostics,
        };
    }
    p.finish_checks();
    let (config, mut diagnostics) = p.finish();
    if config.rules.is_empty() {
        diagnostics.plain("warn: no rules, nothing to do".into());
        return Checked {
            config: None,
            diagnostics,
        };
    }
    if diagnostics.has_errors() {
        return Checked {
            config: None,
            diagnostics,
        };
    }
    if let Err(msg) = load_pki(&config) {
        diagnostics.plain(format!("smtpd: {msg}"));
        return Checked {
            config: None,
            diagnostics,
        };
    }
    let mut config = config;
    if let Err(msg) = check_queue_key(&mut config) {
        diagnostics.plain(format!("smtpd: {msg}"));
        return Checked {
            config: None,
            diagnostics,
        };
    }
    Checked {
        config: Some(config),
        diagnostics,
    }
}

/// Certificates and keys are read at start-up, and by `-n` too.
fn load_pki(config: &Config) -> Result<(), String> {
    for pki in &config.pkis {
        let Some(cert) = &pki.cert else {
            return Err("load_pki_tree: missing certificate file".into());
        };
        let ok = std::fs::read(cert)
            .map(|b| String::from_utf8_lossy(&b).contains("-----BEGIN CERTIFICATE-----"))
            .unwrap_or(false);
        if !ok {
            return Err("load_pki_tree: failed to load certificate file".into());
        }
        let Some(key) = &pki.key else {
            return Err("load_pki_tree: missing key file".into());
        };
        let ok = std::fs::read(key)
            .map(|b| String::from_utf8_lossy(&b).contains("PRIVATE KEY-----"))
            .unwrap_or(false);
        if !ok {
            return Err("load_pki_tree: failed to load key file".into());
        }
    }
    for ca in &config.cas {
        let ok = std::fs::read(&ca.cert)
            .map(|b| String::from_utf8_lossy(&b).contains("-----BEGIN CERTIFICATE-----"))
            .unwrap_or(false);
        if !ok {
            return Err("load_pki_tree: failed to load CA file".into());
        }
    }
    Ok(())
}

/// `queue encryption KEY`: 32 bytes, or 64 hex digits; `stdin` or `-` read it from
/// standard input. The key goes to `config.queue.key`. Without KEY the key is asked for
/// at start-up ([`set_prompted_queue_key`]), not when the configuration is checked, as
/// 6.8 does.
fn check_queue_key(config: &mut Config) -> Result<(), String> {
    let Some(key) = &config.queue.encryption else {
        return Ok(());
    };
    let key = match key.as_deref() {
        None => return Ok(()),
        Some("stdin") | Some("-") => {
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
            line.trim_end_matches(['\r', '\n']).to_string()
        }
        Some(k) => k.to_string(),
    };
    set_queue_key(config, &key)
}

fn set_queue_key(config: &mut Config, key: &str) -> Result<(), String> {
    match crate::queue::crypto::parse_key(key) {
        Some(k) => {
            config.queue.key = Some(k);
            Ok(())
        }
        None => Err("crypto_setup:invalid key for queue encryption".into()),
    }
}

/// `queue encryption` without a key, at start-up: asked for as 6.8's getpass(3) does
/// (`queue key: ` on the terminal, without echo), or read as a line of standard input
/// when that is not a terminal.
pub fn set_prompted_queue_key(config: &mut Config) -> Result<(), String> {
    if config.queue.encryption != Some(None) || config.queue.key.is_some() {
        return Ok(());
    }
    use std::io::{IsTerminal, Write};
    let stdin = std::io::stdin();
    let mut line = String::new();
    if stdin.is_terminal() {
        use nix::sys::termios::{LocalFlags, SetArg, tcgetattr, tcsetattr};
        eprint!("queue key: ");
        let _ = std::io::stderr().flush();
        let saved = tcgetattr(&stdin).ok();
        if let Some(t) = &saved {
            let mut quiet = t.clone();
            quiet.local_flags.remove(LocalFlags::ECHO);
            let _ = tcsetattr(&stdin, SetArg::TCSANOW, &quiet);
        }
        let _ = stdin.read_line(&mut line);
        if let Some(t) = &saved {
            let _ = tcsetattr(&stdin, SetArg::TCSANOW, t);
        }
        eprintln!();
    } else {
        let _ = stdin.read_line(&mut line);
    }
    set_queue_key(config, line.trim_end_matches(['\r', '\n']))
}

/// Entry point for a fuzzer: arbitrary bytes as smtpd.conf, checked on a machine with only
/// a loopback interface. Must never panic for any input; an accepted configuration must
/// print back to text that is accepted again and means the same (a panic says which).
/// Returns whether the input was accepted.
pub fn fuzz_config(data: &[u8]) -> bool {
    let opts = parse::Options {
        defines: Vec::new(),
        hostname: Some("mx.example.org".into()),
    };
    let system = system::LoopbackSystem;
    let Some(cfg) = check_text("fuzz.conf", data, &opts, &system).config else {
        return false;
    };
    let text = print::print(&cfg);
    let again = check_text("printed.conf", text.as_bytes(), &opts, &system);
    let Some(cfg2) = again.config else {
        panic!("printed configuration refused:\n{text}");
    };
    assert!(cfg == cfg2, "printed configuration differs:\n{text}");
    true
}
