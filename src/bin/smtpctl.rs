//! smtpctl(8): argument parsing and wiring only.
//!
//! Commands may be abbreviated to an unambiguous prefix, as OpenSMTPD's smtpctl allows;
//! `encrypt` is the only command word starting with `e`, so any prefix of it will do.

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::process::ExitCode;

use smtpd::table::credentials;

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let Some(command) = args.first() else {
        eprintln!("usage: smtpctl command [argument ...]");
        return ExitCode::from(1);
    };
    let command = command.as_bytes();
    if !command.is_empty() && b"encrypt".starts_with(command) {
        return encrypt(&args[1..]);
    }
    let words: Vec<String> = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    eprintln!("smtpctl: command not available yet: {}", words.join(" "));
    ExitCode::from(1)
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
