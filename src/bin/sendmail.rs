//! sendmail(8): submit the message on stdin through the local enqueue socket.
//!
//! The socket is the daemon's for `--spool DIR` (or `SMTPD_SPOOL`), else the system one.

use std::path::PathBuf;

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
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
