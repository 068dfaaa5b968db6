//! smtpd(8): argument parsing and wiring only.

use std::process::ExitCode;

use clap::{ArgAction, Parser};
use smtpd::config::{self, parse::Options, system::RealSystem};
use smtpd::rules::RuleGraph;

const USAGE: &str = "usage: smtpd [-dFhnv] [-D macro=value] [-f file] [-P system] [-T trace] [--spool dir] [--resolv-conf file] [--pidfile file]";

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
    /// Pid file (default: /run/smtpd.pid when started as root without -d).
    #[arg(long = "pidfile", value_name = "file")]
    pidfile: Option<String>,
    /// resolv.conf-format file naming the DNS servers.
    #[arg(
        long = "resolv-conf",
        value_name = "file",
        default_value = "/etc/resolv.conf"
    )]
    resolv_conf: String,
}

fn main() -> ExitCode {
    // A delivery helper process (re-executed with the recipient's uid) does its job and exits.
    if let Some(code) = smtpd::deliver::helper_main_if_requested() {
        std::process::exit(code);
    }
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
    let Some(mut cfg) = checked.config else {
        return ExitCode::from(1);
    };
    // `queue encryption` without a key: asked for at start-up only, as 6.8 does.
    if !args.check
        && let Err(msg) = config::set_prompted_queue_key(&mut cfg)
    {
        eprintln!("smtpd: {msg}");
        return ExitCode::from(1);
    }
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
    run_daemon(&args, graph)
}

/// Start the server: logging, listeners, queue, then serve until SIGTERM or SIGINT.
fn run_daemon(args: &Args, graph: std::sync::Arc<RuleGraph>) -> ExitCode {
    use smtpd::log::{self, Destination};
    use std::sync::Arc;
    use tracing::info;

    let dest = if args.debug {
        Destination::Stderr
    } else {
        Destination::Syslog
    };
    log::init(dest, args.verbose > 0, &args.traces);
    graph.trace_filter_init();
    // `queue encryption`: queued messages and envelopes are sealed with this key.
    if let Some(key) = &graph.config.queue.key {
        smtpd::queue::crypto::install(smtpd::queue::crypto::Cipher::new(key));
    }
    // `queue compression`: they are stored gzip-compressed (before they are sealed).
    if graph.config.queue.compression {
        smtpd::queue::compress::enable();
    }
    // Bind before going to the background, so that a taken port is reported to the caller.
    let bound = match smtpd::smtp::listen::bind_all(&graph.config) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    // TLS for every listener that offers it, from the configuration's pki and ca.
    let mut tls = Vec::new();
    if graph.config.listeners.iter().any(|l| l.tls.is_some()) {
        let store = match smtpd::tls::TlsStore::load(&graph.config) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("smtpd: {e}");
                return ExitCode::from(1);
            }
        };
        for l in &graph.config.listeners {
            if l.tls.is_none() {
                tls.push(None);
                continue;
            }
            let name = l
                .hostname
                .clone()
                .unwrap_or_else(|| graph.config.hostname.clone());
            match smtpd::tls::ServerTls::for_listener(&store, l, &name) {
                Ok(t) => tls.push(Some(std::sync::Arc::new(t))),
                Err(e) => {
                    eprintln!("smtpd: {e}");
                    return ExitCode::from(1);
                }
            }
        }
    }
    let fds = smtpd::smtp::listen::raise_fd_limit();
    // The relay client's certificates and keys, read while still privileged.
    let relay_tls = smtpd::tls::TlsStore::load(&graph.config).unwrap_or_else(|e| {
        tracing::warn!("warn: relay: {e}");
        smtpd::tls::TlsStore::default()
    });
    // The spool as an absolute path: going to the background changes to `/`.
    let spool_path =
        std::path::absolute(&args.spool).unwrap_or_else(|_| std::path::PathBuf::from(&args.spool));
    // Started as root: the network side will run as an unprivileged user, who owns the
    // spool; a privileged broker stays behind for what needs root.
    let unprivileged = if nix::unistd::geteuid().is_root() {
        match smtpd::privsep::unprivileged_user() {
            Ok(u) => Some(u),
            Err(e) => {
                eprintln!("smtpd: {e}");
                return ExitCode::from(1);
            }
        }
    } else {
        None
    };
    if let Some(user) = &unprivileged
        && let Err(e) = smtpd::privsep::prepare_spool(&spool_path, user)
    {
        eprintln!("smtpd: spool {e}");
        return ExitCode::from(1);
    }
    // The local enqueue socket (`listen on socket`, written or implicit), for sendmail.
    let socket_path = smtpd::smtp::listen::socket_path(&spool_path);
    let local = match smtpd::smtp::listen::socket_listener(&graph.config) {
        Some(i) => match smtpd::smtp::listen::bind_socket(&socket_path) {
            Ok(s) => Some((i, s)),
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(1);
            }
        },
        None => None,
    };
    // The control socket for smtpctl: <spool>/smtpd.sock with --spool, else the system's.
    let spool_dir = spool_path.as_path();
    let custom = args.spool != smtpd::queue::DEFAULT_SPOOL;
    let control_path = smtpd::control::socket_path(custom.then_some(spool_dir));
    let control_socket = match smtpd::control::server::bind(&control_path) {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::warn!("warn: control: {}: {e}", control_path.display());
            None
        }
    };
    if let Some(user) = &unprivileged {
        // The sockets inside the spool belong to its owner like everything else there.
        for path in [&socket_path, &control_path] {
            if path.starts_with(spool_dir) && std::fs::symlink_metadata(path).is_ok() {
                let _ = std::os::unix::fs::lchown(path, Some(user.uid), Some(user.gid));
            }
        }
    }
    if !args.debug && !args.foreground {
        // Before any thread exists: fork is only safe in a single-threaded process.
        if let Err(e) = nix::unistd::daemon(false, false) {
            eprintln!("smtpd: daemon: {e}");
            return ExitCode::from(1);
        }
    }
    // The pid file init scripts stop smtpd with (OpenSMTPD writes /run/smtpd.pid too): the
    // pid of this process, which runs the network side and ends everything on SIGTERM.
    let pidfile = args
        .pidfile
        .clone()
        .map(std::path::PathBuf::from)
        .or_else(|| {
            (!args.debug && nix::unistd::geteuid().is_root()).then(smtpd::privsep::default_pidfile)
        });
    if let Some(p) = &pidfile
        && let Err(e) = smtpd::privsep::write_pidfile(p)
    {
        eprintln!("smtpd: pidfile {}: {e}", p.display());
        tracing::warn!("warn: smtpd: pidfile {}: {e}", p.display());
    }
    let proc_specs = smtpd::processor::specs(&graph.config);
    let mut spawned = Vec::new();
    if let Some(user) = &unprivileged {
        use std::os::fd::AsRawFd;
        let mut close: Vec<std::os::fd::RawFd> =
            bound.iter().map(|b| b.socket.as_raw_fd()).collect();
        close.extend(local.as_ref().map(|(_, s)| s.as_raw_fd()));
        close.extend(control_socket.as_ref().map(|s| s.as_raw_fd()));
        let agent = smtpd::deliver::DeliveryAgent::new()
            .with_subaddress_delimiter(graph.config.smtp.sub_addr_delim);
        let offline = smtpd::privsep::offline::Submitter::beside_current_exe(&spool_path);
        let started = match smtpd::privsep::start_broker(agent, offline, &close) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("smtpd: {e}");
                return ExitCode::from(1);
            }
        };
        let broker_pid = started.pid;
        smtpd::privsep::broker::install(started.client);
        if let Some(client) = smtpd::privsep::broker::client() {
            // The broker never writes on the channel: end of file there means it is gone,
            // and the daemon cannot deliver, read .forward files or check passwords.
            let watcher = std::thread::Builder::new()
                .name("smtpd-broker-watch".into())
                .spawn(move || {
                    smtpd::privsep::broker::watch(client.channel());
                    tracing::error!("smtpd: the privileged broker exited: exiting");
                    let _ = nix::sys::wait::waitpid(broker_pid, None);
                    std::process::exit(1);
                });
            if let Err(e) = watcher {
                eprintln!("smtpd: thread: {e}");
                return ExitCode::from(1);
            }
        }
        // Filter programs are started while still root, each as its own user.
        spawned = match smtpd::processor::spawn_all(&proc_specs) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("smtpd: {e}");
                return ExitCode::from(1);
            }
        };
        if let Err(e) = smtpd::privsep::drop_privileges(user) {
            eprintln!("smtpd: {e}");
            return ExitCode::from(1);
        }
        if user.fallback {
            tracing::warn!(
                "warn: smtpd: none of the users {} exists: the network side runs as {}",
                smtpd::privsep::UNPRIVILEGED_USERS.join(", "),
                user.name
            );
        }
        tracing::info!(
            "info: smtpd: network side runs as {} (uid {}, gid {}), privileged broker pid {}",
            user.name,
            user.uid,
            user.gid,
            broker_pid
        );
    }
    if unprivileged.is_none() {
        spawned = match smtpd::processor::spawn_all(&proc_specs) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("smtpd: {e}");
                return ExitCode::from(1);
            }
        };
    }
    smtpd::table::trace_dump(&graph.config.tables);
    // External tables' programs run as the daemon's own (unprivileged) user, as
    // OpenSMTPD's lookup process starts them after its privilege drop.
    match graph.open_tables() {
        Ok(0) => {}
        Ok(n) => tracing::debug!("debug: smtpd: {n} table program(s) started"),
        Err(e) => {
            if args.debug || args.foreground {
                eprintln!("smtpd: {e}");
            } else {
                tracing::error!("smtpd: {e}");
            }
            return ExitCode::from(1);
        }
    }
    let (spool, recovery) = match smtpd::queue::Spool::open(&spool_path) {
        Ok(x) => x,
        Err(e) => {
            tracing::error!("smtpd: spool {}: {e}", args.spool);
            eprintln!("smtpd: spool {}: {e}", args.spool);
            return ExitCode::from(1);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("smtpd: runtime: {e}");
            return ExitCode::from(1);
        }
    };
    // With a broker, the broker (still root) removes the pid file when smtpd ends.
    let broker_running = unprivileged.is_some();
    runtime.block_on(async move {
        info!("info: smtpd {} starting", env!("CARGO_PKG_VERSION"));
        // Signals are taken over first: a stop that comes while smtpd is still starting is
        // an orderly stop too, not the default action's sudden death.
        use tokio::signal::unix::{SignalKind, signal};
        let (mut term, mut int) = match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(t), Ok(i)) => (t, i),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!("warn: signal: {e}");
                return;
            }
        };
        // SIGHUP does not stop smtpd (OpenSMTPD ignores it too); the configuration is read
        // at start only, so the log says how to apply a change.
        let mut hup = signal(SignalKind::hangup()).ok();
        let resolver: Arc<dyn smtpd::dns::Resolver> = match smtpd::dns::HickoryResolver::from_file(
            std::path::Path::new(&args.resolv_conf),
            &smtpd::dns::HostsFile::System,
        ) {
            Ok(r) => Arc::new(r),
            Err(e) => {
                tracing::warn!("warn: resolver: {e}: reverse names are unknown");
                match smtpd::dns::ZoneResolver::from_zone("") {
                    Ok(z) => Arc::new(z),
                    Err(_) => return,
                }
            }
        };
        let max_sessions = (fds.saturating_sub(64) as usize).clamp(64, 100_000);
        tracing::debug!("debug: smtp: will accept at most {max_sessions} clients");
        let spool = Arc::new(spool);
        if recovery.rolled_back > 0 {
            info!(
                "info: queue: {} unfinished transactions rolled back",
                recovery.rolled_back
            );
        }
        if let Some(notice) = smtpd::deliver::privsep::unprivileged_notice() {
            info!("{notice}");
        }
        let runner = smtpd::deliver::runner::Runner::new(
            graph.clone(),
            spool.clone(),
            &recovery.envelopes,
            resolver.clone(),
            relay_tls,
        );
        for p in &args.paused {
            match p.as_str() {
                "mda" => runner.set_paused(smtpd::queue::DeliveryKind::Mda, true),
                "mta" => runner.set_paused(smtpd::queue::DeliveryKind::Mta, true),
                _ => {}
            }
            info!("info: {p} paused");
        }
        tokio::spawn(runner.clone().run());
        // `-P smtp` and `smtpctl pause smtp`: the listeners stay bound but do not accept.
        let smtp_gate =
            smtpd::control::gate::SmtpGate::new(args.paused.iter().any(|p| p == "smtp"));
        if let Some(listener) = control_socket {
            smtpd::control::server::start_bound(
                smtpd::control::server::Control::new(runner.clone(), smtp_gate.clone()),
                listener,
                control_path,
            );
        }
        // No mail is taken before every filter program has registered.
        let session_timeout = std::time::Duration::from_secs(300);
        let processors = if spawned.is_empty() {
            smtpd::processor::Processors::none()
        } else {
            match smtpd::processor::Processors::register(
                spawned,
                &smtpd::processor::subsystems(&graph.config),
                // `config|admd|`: the `admd` name, else the server name (as 6.8).
                graph
                    .config
                    .admd
                    .as_deref()
                    .unwrap_or(&graph.config.hostname),
                session_timeout,
            )
            .await
            {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!("{e}");
                    if matches!(e, smtpd::processor::RegisterError::Lost(_)) {
                        // 6.8's parent shuts down after a lost processor.
                        info!("Exiting");
                    }
                    std::process::exit(1);
                }
            }
        };
        runner.set_filter_reports(processors.clone());
        let server = Arc::new(smtpd::smtp::server::Server {
            processors,
            delivery: Some(runner),
            tls,
            graph: graph.clone(),
            spool,
            resolver,
            sessions: Arc::new(tokio::sync::Semaphore::new(max_sessions)),
            rdns_bound: std::time::Duration::from_secs(2),
            timeout: session_timeout,
        });
        for b in bound {
            tracing::debug!(
                "debug: smtp: listen on {} port {}",
                b.addr.ip(),
                b.addr.port()
            );
            tokio::spawn(
                smtp_gate
                    .clone()
                    .serve(server.clone(), b.socket, b.listener),
            );
        }
        let own_socket = local.is_some();
        if own_socket {
            // Messages sendmail left while smtpd was down go in now that the socket is
            // served: as root the broker submits each as its owner.
            let submitter = smtpd::privsep::offline::Submitter::beside_current_exe(&spool_path);
            tokio::task::spawn_blocking(move || {
                let outcome = match smtpd::privsep::broker::client() {
                    Some(b) => b.submit_offline(),
                    None => Ok(smtpd::privsep::offline::submit_all(&submitter)),
                };
                match outcome {
                    Ok(o) if o.submitted + o.kept > 0 => info!(
                        "info: offline: {} message(s) submitted, {} kept",
                        o.submitted, o.kept
                    ),
                    Ok(_) => {}
                    Err(e) => tracing::warn!("warn: offline: {e}"),
                }
            });
        }
        // Local submissions are taken even with `-P smtp`, as OpenSMTPD's enqueue sessions.
        if let Some((i, s)) = local {
            match tokio::net::UnixListener::from_std(s) {
                Ok(l) => {
                    tokio::spawn(smtpd::smtp::server::accept_local_loop(server.clone(), l, i));
                }
                Err(e) => tracing::warn!("warn: smtp: {}: {e}", socket_path.display()),
            }
        }
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                Some(()) = async {
                    match hup.as_mut() {
                        Some(h) => h.recv().await,
                        None => std::future::pending().await,
                    }
                } => {
                    info!(
                        "info: smtpd: SIGHUP received: the configuration is not reloaded; \
                         restart smtpd to apply changes (smtpctl update table NAME re-reads a table)"
                    );
                }
            }
        }
        smtpd::processor::set_stopping();
        info!("Exiting");
        if !broker_running {
            smtpd::privsep::remove_pidfile();
        }
        if own_socket {
            let _ = std::fs::remove_file(&socket_path);
        }
    });
    ExitCode::SUCCESS
}
