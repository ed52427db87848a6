//! The `tinylb` command: reads arguments and config.json and runs the load balancer until
//! SIGINT or SIGTERM. By default it runs as a small master process that keeps the listening
//! socket and runs the server in a child process ([`tinylb::master`]); `--no-master` runs the
//! server in this process. The only place that exits: 0 after a clean shutdown, 2 for a bad
//! config or bad arguments, 1 when tinylb cannot start.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tinylb::client::admin_server::bind_admin_socket;
use tinylb::client::{Listener, bind_socket};
use tinylb::config::Config;
use tinylb::generation::Generation;
use tinylb::master::handoff::Handoff;
use tinylb::{Inherited, LoadBalancer};
use tinylb::{master, systemd};

const USAGE: &str = "\
usage: tinylb [--config PATH] [--check] [--no-master]

  --config PATH  the config file (default: ./config.json)
  --check        validate the config, print a one-line summary, and exit
  --no-master    run the server in this one process: no crash restart, no
                 recycling, no SIGHUP upgrade (for a debugger, or to read it)
  --help         show this help
  --version      show the version

Signals: SIGTERM or SIGINT drain and stop; SIGHUP starts a new server process
from the binary on disk with the config re-read, and drains the old one.
Logs go to stderr; set RUST_LOG=debug for one line per request.";

/// How this process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// The default: keep the socket, run the server as a child.
    Master,
    /// `--no-master`: the server, here.
    Alone,
    /// `--child` (the master starts it so): the server, under a master.
    Child,
}

/// What the command line asked for.
enum Command {
    Run {
        config: PathBuf,
        check_only: bool,
        role: Role,
    },
    Help,
    Version,
}

fn parse_args(args: impl Iterator<Item = String>) -> Result<Command, String> {
    let mut config = PathBuf::from("config.json");
    let mut check_only = false;
    let mut role = Role::Master;
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
            "--check" => check_only = true,
            "--no-master" => role = Role::Alone,
            "--child" => role = Role::Child,
            "-c" | "--config" => {
                config = args
                    .next()
                    .ok_or_else(|| format!("{arg} needs a file path"))?
                    .into();
            }
            _ => match arg.strip_prefix("--config=") {
                Some(path) => config = path.into(),
                None => return Err(format!("unknown argument {arg:?}")),
            },
        }
    }
    Ok(Command::Run {
        config,
        check_only,
        role,
    })
}

/// Starts the logger. A child's lines carry its generation (`[tinylb::forward g2]`), so that
/// during a swap the old process's lines can be told from the new one's; the master's lines
/// name `tinylb::master`.
fn init_logging(generation: Option<u64>) {
    // with_level before env(): RUST_LOG overrides the default (docs/crates.md). ureq logs
    // every request at debug; keep it quiet unless it warns. tiny_http's only messages are
    // accept errors, which tinylb reports itself (once, with what it does about them).
    let logger = simple_logger::SimpleLogger::new()
        .with_level(log::LevelFilter::Info)
        .with_module_level("ureq", log::LevelFilter::Warn)
        .with_module_level("ureq_proto", log::LevelFilter::Warn)
        .with_module_level("tiny_http", log::LevelFilter::Off)
        .env()
        .with_utc_timestamps();
    log::set_max_level(logger.max_level());
    // Only fails if a logger is already set, which cannot happen in main.
    let _ = match generation {
        None => log::set_boxed_logger(Box::new(logger)),
        Some(number) => log::set_boxed_logger(Box::new(MarkedLogger {
            inner: logger,
            mark: format!("g{number}"),
        })),
    };
}

/// A logger that puts a mark after each line's target (after, so that module filters such
/// as `RUST_LOG=tinylb=debug`, which match the target's start, still apply).
struct MarkedLogger {
    inner: simple_logger::SimpleLogger,
    mark: String,
}

impl log::Log for MarkedLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        self.inner.enabled(metadata)
    }

    fn log(&self, record: &log::Record) {
        if !self.inner.enabled(record.metadata()) {
            return;
        }
        let target = format!("{} {}", record.target(), self.mark);
        self.inner.log(
            &log::Record::builder()
                .args(*record.args())
                .level(record.level())
                .target(&target)
                .module_path(record.module_path())
                .file(record.file())
                .line(record.line())
                .build(),
        );
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

fn main() -> ExitCode {
    let command = match parse_args(std::env::args().skip(1)) {
        Ok(command) => command,
        Err(message) => {
            eprintln!("tinylb: {message}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let (config_path, check_only, role) = match command {
        Command::Help => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Command::Version => {
            println!("tinylb {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Command::Run {
            config,
            check_only,
            role,
        } => (config, check_only, role),
    };
    // Before any thread exists, so that every thread inherits the mask (see master::signals).
    if role == Role::Master
        && !check_only
        && let Err(error) = master::signals::block()
    {
        eprintln!("tinylb: cannot block signals: {error}");
        return ExitCode::FAILURE;
    }
    let (config, source) = match Config::load_with_source(&config_path) {
        Ok(loaded) => loaded,
        Err(error) => {
            eprintln!("tinylb: bad config: {error}");
            return ExitCode::from(2);
        }
    };
    if check_only {
        for warning in &config.warnings {
            eprintln!("tinylb: warning: {warning}");
        }
        println!("{}: ok: {}", config_path.display(), config.summary());
        return ExitCode::SUCCESS;
    }
    init_logging(match role {
        Role::Child => generation_number(),
        _ => None,
    });
    if role != Role::Child {
        for warning in &config.warnings {
            log::warn!("config: {warning}");
        }
        // Every client connection is a file descriptor; the usual soft limit (1024) is far
        // below what the machine allows, and running out stops accept(). Children inherit it.
        match tinylb::client::socket_options::raise_open_files_limit() {
            Ok(limit) => log::info!("open files limit: {limit}"),
            Err(error) => log::warn!("cannot raise the open files limit: {error}"),
        }
    }
    match role {
        Role::Master => {
            let socket = match listening_socket(&config) {
                Ok(socket) => socket,
                Err(code) => return code,
            };
            // Bound here, once, and handed to every generation: a second tinylb asking for the
            // same address fails now, with the address in its message.
            let admin = match config.admin_address.map(|a| (a, bind_admin_socket(a))) {
                None => None,
                Some((address, Ok(socket))) => Some((address, socket)),
                Some((_, Err(error))) => {
                    log::error!("{error}");
                    return ExitCode::FAILURE;
                }
            };
            let settings = master::Settings {
                config_path,
                admin,
                ready_timeout: config.ready_timeout,
            };
            master::run(socket, settings)
        }
        Role::Alone => {
            let socket = match listening_socket(&config) {
                Ok(socket) => socket,
                Err(code) => return code,
            };
            let server = Server {
                config,
                config_path,
                source,
            };
            server.run(socket, Inherited::alone())
        }
        Role::Child => {
            let handoff = match Handoff::take() {
                Ok(handoff) => handoff,
                Err(error) => {
                    log::error!("{error}");
                    return ExitCode::FAILURE;
                }
            };
            // The admin socket the master bound serves if the config still names its address
            // (the master re-reads the file at SIGHUP, just before this process read it).
            let admin_socket = handoff
                .admin
                .filter(|(address, _)| config.admin_address == Some(*address))
                .map(|(_, socket)| socket);
            let inherited = Inherited {
                generation: handoff.generation,
                master: Some(Arc::new(handoff.master)),
                admin_socket,
                draining: handoff.draining,
            };
            let server = Server {
                config,
                config_path,
                source,
            };
            server.run(handoff.listener, inherited)
        }
    }
}

/// A child's generation number, read early for its log lines.
fn generation_number() -> Option<u64> {
    std::env::var(tinylb::generation::GENERATION_VAR)
        .ok()
        .and_then(|value| Generation::from_env(&value))
        .map(|generation| generation.number)
}

/// The socket systemd passed, or the config's address bound here.
fn listening_socket(config: &Config) -> Result<TcpListener, ExitCode> {
    match systemd::listen_socket() {
        Ok(Some(socket)) => {
            if let Ok(addr) = socket.local_addr() {
                log::info!(
                    "listening on the socket systemd passed ({addr}); the config's port is not used"
                );
            }
            Ok(socket)
        }
        Ok(None) => bind_socket(config.listen).map_err(|error| {
            log::error!("{error}");
            ExitCode::FAILURE
        }),
        Err(error) => {
            log::error!("{error}");
            Err(ExitCode::FAILURE)
        }
    }
}

/// How long past `shutdownGracePeriod` a stopping server may take before it exits anyway.
const SHUTDOWN_MARGIN: Duration = Duration::from_secs(5);

/// The backstop of a graceful shutdown: whatever a thread is blocked on (a client that does
/// not read, a library call without a deadline), the process exits `after` this long, as
/// SIGTERM promises. It runs on a thread of its own, which no client can hold.
fn exit_anyway_after(after: Duration) {
    let spawned = std::thread::Builder::new()
        .name("shutdown-backstop".into())
        .spawn(move || {
            std::thread::sleep(after);
            log::error!(
                "the graceful shutdown took longer than shutdownGracePeriod and {}s: exiting now",
                SHUTDOWN_MARGIN.as_secs()
            );
            std::process::exit(1);
        });
    if let Err(error) = spawned {
        log::warn!("no shutdown backstop ({error}); the shutdown may take longer");
    }
}

/// The server: what runs in a child of the master, or alone with `--no-master`.
struct Server {
    config: Config,
    config_path: PathBuf,
    /// The config file's text, to tell a change from a rewrite.
    source: String,
}

impl Server {
    fn run(self, socket: TcpListener, inherited: Inherited) -> ExitCode {
        let Server {
            config,
            config_path,
            source,
        } = self;
        let (signal_sender, signals) = crossbeam_channel::unbounded();
        if let Err(error) = ctrlc::set_handler(move || {
            let _ = signal_sender.send(());
        }) {
            log::error!("cannot install the signal handler: {error}");
            return ExitCode::FAILURE;
        }
        let listener = match Listener::adopt(socket, config.client_timeout) {
            Ok(listener) => listener,
            Err(error) => {
                log::error!("{error}");
                return ExitCode::FAILURE;
            }
        };
        let grace = config.shutdown_grace_period;
        let bound = listener.local_addr();
        if config.listen.port() != 0 && config.listen != bound && inherited.generation.supervised {
            log::warn!(
                "port: the config asks for {} but the master keeps {bound}; restart tinylb to move",
                config.listen
            );
        }
        let master = inherited.master.clone();
        let mut balancer = match LoadBalancer::start_on(config, listener, inherited) {
            Ok(balancer) => balancer,
            Err(error) => {
                log::error!("{error}");
                return ExitCode::FAILURE;
            }
        };
        // Live reload: edits to the config file are applied without a restart.
        if let Err(error) = balancer.watch_config(config_path, source) {
            log::warn!("config changes will need a restart: {error}");
        }
        match &master {
            Some(master) => master.ready(),
            None => systemd::notify(&format!("READY=1\nMAINPID={}", std::process::id())),
        }
        // Blocks until SIGINT or SIGTERM; a second signal cuts the grace period short.
        let _ = signals.recv();
        if master.is_none() {
            systemd::notify("STOPPING=1");
        }
        exit_anyway_after(grace + SHUTDOWN_MARGIN);
        balancer.shutdown(&signals);
        ExitCode::SUCCESS
    }
}
