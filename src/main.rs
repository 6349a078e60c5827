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
            if let Some(addr) = listen {
                config.server.listen = addr;
            }
            init_tracing(&config);
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
            match runtime.block_on(weir::app::run(
                config,
                weir::clock::system(),
                shutdown_signal(),
            )) {
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

fn init_tracing(config: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("weir={0},{0}", config.log.level)));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
}
