//! The weir command line. Thin: parse arguments, run, map the outcome to an exit code.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use weir::config::{Config, LogFormat};

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(name = "weir", version, about = "Real-time analytics in one binary")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs weir with a config file.
    Run {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Overrides storage.data_dir.
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// Overrides server.listen.
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
    },
    /// Checks a config file, lists every problem with its key path, exits 1 if any.
    CheckConfig {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Reads every segment of every topic of a stopped data dir: CRC, offsets, indexes.
    /// Prints a line per partition; exits 1 naming file and byte of any problem.
    Verify {
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
    },
    /// Prints the records of one partition of a stopped data dir as NDJSON.
    Dump {
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        #[arg(long)]
        topic: String,
        #[arg(long)]
        partition: u32,
        /// The first offset printed.
        #[arg(long, default_value_t = 0)]
        offset: i64,
        /// The most records printed.
        #[arg(long)]
        limit: Option<u64>,
    },
    /// Pipeline maintenance on a stopped data dir.
    #[command(subcommand)]
    Pipeline(PipelineCommand),
}

#[derive(Subcommand)]
enum PipelineCommand {
    /// Forgets a pipeline's checkpoint and results: the next start rebuilds it from the log.
    Reset {
        name: String,
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Overrides storage.data_dir.
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    #[cfg(feature = "fail")]
    let _failpoints = fail::FailScenario::setup();
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config } => match Config::load(&config) {
            Ok(c) => {
                #[allow(clippy::print_stdout, reason = "check-config's verdict is its output")]
                {
                    println!("{}: ok ({} topics)", config.display(), c.topics.len());
                }
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprintln!("{errors}");
                ExitCode::FAILURE
            }
        },
        Command::Verify { data_dir } => {
            let mut out = std::io::stdout().lock();
            match weir::ops::verify(&data_dir, &mut out) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => {
                    eprintln!(
                        "weir verify: {} has corrupt files (listed above)",
                        data_dir.display()
                    );
                    ExitCode::FAILURE
                }
                Err(e) => fail("verify", &e),
            }
        }
        Command::Dump {
            data_dir,
            topic,
            partition,
            offset,
            limit,
        } => {
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            match weir::ops::dump(&data_dir, &topic, partition, offset, limit, &mut out) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail("dump", &e),
            }
        }
        Command::Pipeline(PipelineCommand::Reset {
            name,
            config,
            data_dir,
        }) => {
            let mut config = match Config::load(&config) {
                Ok(c) => c,
                Err(errors) => {
                    eprintln!("{errors}");
                    return ExitCode::FAILURE;
                }
            };
            if let Some(dir) = data_dir {
                config.storage.data_dir = dir;
            }
            match weir::ops::pipeline_reset(&config, &name) {
                Ok(said) => {
                    #[allow(clippy::print_stdout, reason = "the command's verdict is its output")]
                    {
                        println!("{said}");
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => fail("pipeline reset", &e),
            }
        }
        Command::Run {
            config,
            data_dir,
            listen,
        } => {
            // The file with the command line's overrides; read again on SIGHUP.
            let load = move || {
                Config::load(&config).map(|mut c| {
                    if let Some(dir) = &data_dir {
                        c.storage.data_dir.clone_from(dir);
                    }
                    if let Some(addr) = listen {
                        c.server.listen = addr;
                    }
                    c
                })
            };
            let config = match load() {
                Ok(c) => c,
                Err(errors) => {
                    eprintln!("{errors}");
                    return ExitCode::FAILURE;
                }
            };
            let set_log_level = init_tracing(&config);
            let clock = match weir::clock::for_run() {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("weir: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("weir: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let result = runtime.block_on(async {
                let reloads = sighup_reloads(load, set_log_level);
                weir::app::run(config, clock, shutdown_signal(), reloads).await
            });
            // Connections cut off when the drain ran out of grace may still hold tasks;
            // the log is closed, so nothing is left worth waiting for.
            runtime.shutdown_timeout(std::time::Duration::from_secs(1));
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("weir: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Prints an operator command's error and gives its exit code.
fn fail(command: &str, e: &anyhow::Error) -> ExitCode {
    eprintln!("weir {command}: {e:#}");
    ExitCode::FAILURE
}

/// Installs the subscriber: `RUST_LOG` if set, else `[log] level`; `[log] format`.
/// Returns how a reload changes the level (refused while `RUST_LOG` is set: it wins).
fn init_tracing(config: &Config) -> weir::reload::SetLogLevel {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::prelude::*;
    let level_filter = |level: &str| EnvFilter::new(format!("weir={level},{level}"));
    // An empty RUST_LOG counts as unset; one that does not parse is ignored as before.
    let from_env = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .and_then(|v| EnvFilter::try_new(v).ok());
    let env_wins = from_env.is_some();
    let (filter, handle) = tracing_subscriber::reload::Layer::new(
        from_env.unwrap_or_else(|| level_filter(&config.log.level)),
    );
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(filter);
    match config.log.format {
        LogFormat::Json => registry.with(fmt.json()).init(),
        LogFormat::Text => registry.with(fmt).init(),
    }
    Box::new(move |level| {
        if env_wins {
            return Err("RUST_LOG is set, and wins over [log] level".to_string());
        }
        handle
            .modify(|f| *f = level_filter(level))
            .map_err(|e| e.to_string())
    })
}

/// A reload request per SIGHUP: the file read again by `load`. The handler is installed
/// here, before the log opens, so a SIGHUP during recovery does not end the process.
fn sighup_reloads(
    load: impl Fn() -> Result<Config, weir::config::ConfigErrors> + Send + 'static,
    set_log_level: weir::reload::SetLogLevel,
) -> weir::reload::Reloads {
    use tokio::signal::unix::{SignalKind, signal};
    let (tx, requests) = tokio::sync::mpsc::channel(1);
    match signal(SignalKind::hangup()) {
        Ok(mut hup) => {
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    tracing::info!("SIGHUP: reading the config file again");
                    if tx.send(load()).await.is_err() {
                        return;
                    }
                }
            });
        }
        Err(e) => tracing::warn!(error = %e, "cannot handle SIGHUP; config reload is off"),
    }
    weir::reload::Reloads {
        requests,
        set_log_level,
    }
}

/// SIGTERM or SIGINT. The handlers are installed here, when called, not when the future
/// is first polled: a SIGTERM during start-up (systemd stopping a weir that is still
/// recovering) must begin a clean stop, not kill the process with the default action.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let signals = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        let (Ok(mut term), Ok(mut int)) = signals else {
            std::future::pending::<()>().await;
            return;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
    }
}
