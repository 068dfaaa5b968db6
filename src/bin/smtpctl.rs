//! smtpctl(8): argument parsing and wiring only.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() {
        eprintln!("usage: smtpctl command [argument ...]");
        return ExitCode::from(1);
    }
    eprintln!("smtpctl: command not available yet: {}", args.join(" "));
    ExitCode::from(1)
}
