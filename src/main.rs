//! The `tinylb` command: reads arguments and config.json, starts the load balancer, and runs
//! until SIGINT or SIGTERM. The only place that exits: 0 after a clean shutdown, 2 for a bad
//! config or bad arguments, 1 when tinylb cannot start.

use std::path::PathBuf;
use std::process::ExitCode;

use tinylb::LoadBalancer;
use tinylb::config::Config;

const USAGE: &str = "\
usage: tinylb [--config PATH] [--check]

  --config PATH  the config file (default: ./config.json)
  --check        validate the config, print a one-line summary, and exit
  --help         show this help
  --version      show the version

Logs go to stderr; set RUST_LOG=debug for one line per request.";

/// What the command line asked for.
enum Command {
    Run { config: PathBuf, check_only: bool },
    Help,
    Version,
}

fn parse_args(args: impl Iterator<Item = String>) -> Result<Command, String> {
    let mut config = PathBuf::from("config.json");
    let mut check_only = false;
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
            "--check" => check_only = true,
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
    Ok(Command::Run { config, check_only })
}

fn init_logging() {
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
    // Only fails if a logger is already set, which cannot happen in main.
    let _ = logger.init();
}

fn main() -> ExitCode {
    let command = match parse_args(std::env::args().skip(1)) {
        Ok(command) => command,
        Err(message) => {
            eprintln!("tinylb: {message}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let (config_path, check_only) = match command {
        Command::Help => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Command::Version => {
            println!("tinylb {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Command::Run { config, check_only } => (config, check_only),
    };
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
    init_logging();
    for warning in &config.warnings {
        log::warn!("config: {warning}");
    }
    // Every client connection is a file descriptor; the usual soft limit (1024) is far below
    // what the machine allows, and running out stops accept().
    match tinylb::client::socket_options::raise_open_files_limit() {
        Ok(limit) => log::info!("open files limit: {limit}"),
        Err(error) => log::warn!("cannot raise the open files limit: {error}"),
    }

    let (signal_sender, signals) = crossbeam_channel::unbounded();
    if let Err(error) = ctrlc::set_handler(move || {
        let _ = signal_sender.send(());
    }) {
        log::error!("cannot install the signal handler: {error}");
        return ExitCode::FAILURE;
    }
    let mut balancer = match LoadBalancer::start(config) {
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
    // Blocks until SIGINT or SIGTERM; a second signal cuts the grace period short.
    let _ = signals.recv();
    balancer.shutdown(&signals);
    ExitCode::SUCCESS
}
