//! sendmail(8): submit the message on stdin through the local enqueue socket.
//!
//! The socket is the daemon's for `--spool DIR` (or `SMTPD_SPOOL`), else the system one.
//! Called `mailq` (or with `-bp`) it lists the queue, as `smtpctl show queue`; called
//! `newaliases` (or with `-bi`) it rebuilds the aliases database; `send-mail` is sendmail.

use std::path::PathBuf;

/// `mailq`: `smtpctl show queue`, by the smtpctl beside this program.
fn mailq(spool: Option<&str>) -> ! {
    let smtpctl = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("smtpctl")))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("smtpctl"));
    let mut cmd = std::process::Command::new(&smtpctl);
    if let Some(s) = spool {
        cmd.arg("--spool").arg(s);
    }
    match cmd.args(["show", "queue"]).status() {
        Ok(st) => std::process::exit(st.code().unwrap_or(1)),
        Err(e) => {
            eprintln!("mailq: {}: {e}", smtpctl.display());
            std::process::exit(smtpd::smtp::enqueue::EX_UNAVAILABLE);
        }
    }
}

fn main() {
    let invoked = std::env::args().next().unwrap_or_default();
    let name = std::path::Path::new(&invoked)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if name == "newaliases" || args.iter().any(|a| a == "-bi") {
        let rest: Vec<std::ffi::OsString> = if name == "newaliases" {
            args.iter().map(Into::into).collect()
        } else {
            Vec::new()
        };
        std::process::exit(smtpd::table::makemap::newaliases_main("newaliases", &rest));
    }
    let mut spool = std::env::var("SMTPD_SPOOL")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| smtpd::smtp::listen::SYSTEM_SPOOL.to_string());
    if let Some(i) = args
        .iter()
        .position(|a| a == "--spool" || a.starts_with("--spool="))
    {
        let value = match args[i].strip_prefix("--spool=") {
            Some(v) => Some(v.to_string()),
            None => args.get(i + 1).cloned(),
        };
        let Some(v) = value else {
            eprintln!("sendmail: option requires an argument -- spool");
            std::process::exit(smtpd::smtp::enqueue::EX_USAGE);
        };
        let n = if args[i].starts_with("--spool=") {
            1
        } else {
            2
        };
        args.drain(i..i + n);
        spool = v;
    }
    if name == "mailq" || args.iter().any(|a| a == "-bp") {
        let custom = std::env::var("SMTPD_SPOOL").is_ok_and(|s| !s.is_empty())
            || spool != smtpd::smtp::listen::SYSTEM_SPOOL;
        mailq(custom.then_some(spool.as_str()));
    }
    let spool = PathBuf::from(spool);
    let socket = smtpd::smtp::listen::socket_path(&spool);
    let offline = smtpd::queue::layout::Layout::new(&spool).offline();
    let date = smtpd::smtp::enqueue::date_now();
    let code = smtpd::smtp::enqueue::run(
        &args,
        &socket,
        Some(&offline),
        &mut std::io::stdin().lock(),
        &date,
    );
    std::process::exit(code);
}
