//! smtpd(8): argument parsing and wiring only.

use std::process::ExitCode;

use clap::{ArgAction, Parser};
use smtpd::config::{self, parse::Options, system::RealSystem};
use smtpd::rules::RuleGraph;

const USAGE: &str = "usage: smtpd [-dFhnv] [-D macro=value] [-f file] [-P system] [-T trace] [--spool dir] [--resolv-conf file]";

#[derive(Parser, Debug)]
#[command(name = "smtpd", disable_help_flag = true, disable_version_flag = true, override_usage = USAGE)]
struct Args {
    /// Run in the foreground and log to stderr.
    #[arg(short = 'd', action = ArgAction::SetTrue)]
    debug: bool,
    /// Run in the foreground, logging to syslog.
    #[arg(short = 'F', action = ArgAction::SetTrue)]
    foreground: bool,
    /// Print the version and usage.
    #[arg(short = 'h', action = ArgAction::SetTrue)]
    help: bool,
    /// Check the configuration and exit.
    #[arg(short = 'n', action = ArgAction::SetTrue)]
    check: bool,
    /// More verbose logging; with -n, print the configuration back.
    #[arg(short = 'v', action = ArgAction::Count)]
    verbose: u8,
    /// Define a macro, overriding the file's definition.
    #[arg(short = 'D', value_name = "macro=value")]
    defines: Vec<String>,
    /// Configuration file.
    #[arg(short = 'f', value_name = "file", default_value = "/etc/smtpd.conf")]
    file: String,
    /// Start with a subsystem paused (mda, mta, smtp).
    #[arg(short = 'P', value_name = "system")]
    paused: Vec<String>,
    /// Enable a trace category.
    #[arg(short = 'T', value_name = "trace")]
    traces: Vec<String>,
    /// Spool directory.
    #[arg(long = "spool", value_name = "dir", default_value = "/var/spool/smtpd")]
    spool: String,
    /// resolv.conf-format file naming the DNS servers.
    #[arg(
        long = "resolv-conf",
        value_name = "file",
        default_value = "/etc/resolv.conf"
    )]
    resolv_conf: String,
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            if e.kind() == clap::error::ErrorKind::DisplayHelp {
                eprintln!("version: smtpd {}", env!("CARGO_PKG_VERSION"));
            }
            eprintln!("{USAGE}");
            return ExitCode::from(1);
        }
    };
    if args.help {
        // As OpenSMTPD: the version, the usage, and exit status 1.
        eprintln!("version: smtpd {}", env!("CARGO_PKG_VERSION"));
        eprintln!("{USAGE}");
        return ExitCode::from(1);
    }
    for p in &args.paused {
        if !matches!(p.as_str(), "mda" | "mta" | "smtp") {
            eprintln!("smtpd: invalid system to pause: {p}");
            return ExitCode::from(1);
        }
    }
    for t in &args.traces {
        if smtpd::log::trace_category(t).is_none() {
            eprintln!("warn: unknown trace flag \"{t}\"");
        }
    }
    let options = Options {
        defines: args.defines.clone(),
        hostname: None,
    };
    let checked = config::check(&args.file, &options, &RealSystem);
    let hints = std::env::var_os("SMTPD_NO_HINTS").is_none();
    let report = checked
        .diagnostics
        .render(hints, &|f| std::fs::read_to_string(f).ok());
    eprint!("{report}");
    let Some(cfg) = checked.config else {
        return ExitCode::from(1);
    };
    // Start-up compiles the rule graph; so does the check, so that both validate the same.
    let graph = RuleGraph::compile(cfg);
    if args.check {
        if args.verbose > 0 {
            print!("{}", config::print::print(&graph.config));
        }
        eprintln!("configuration OK");
        // Nothing left to do: leave without freeing a configuration that may hold millions of
        // table entries.
        std::process::exit(0);
    }
    let _ = (
        args.debug,
        args.foreground,
        &args.traces,
        &args.spool,
        &args.resolv_conf,
    );
    eprintln!(
        "smtpd: the SMTP service is not available in this build; use -n to check a configuration"
    );
    ExitCode::from(1)
}
