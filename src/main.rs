//! The `captain-bridge` binary: parse the command line, set up logging, then hand over to
//! the library (`run` serves until SIGTERM; `check-config` validates and exits; `demo` runs
//! the whole loop in one process; `healthcheck` asks a running bridge's `/healthz`, for
//! container health checks in images that have no HTTP client).

use anyhow::Context;
use captain_bridge::app::Application;
use captain_bridge::config::Settings;
use captain_bridge::{shutdown, telemetry};
use clap::{Parser, Subcommand};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(version, about = "Kafka ⇄ Captain Data v4 bridge")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Consume launch requests, submit runs, serve callbacks, until SIGTERM.
    Run {
        /// TOML or YAML config file; every key has a default (see README).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Validate the configuration (file, environment, secrets) and exit.
    CheckConfig {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Show the loop with no service to install: an embedded Kafka (librdkafka's mock
    /// cluster), captain-sim in process and the bridge; prints every record it publishes.
    #[cfg(feature = "demo")]
    Demo,
    /// Exit 0 if the bridge at URL answers 2xx within 3 s, 1 otherwise (a HEALTHCHECK).
    Healthcheck {
        #[arg(
            long,
            env = "CAPTAIN_BRIDGE_HEALTHCHECK_URL",
            default_value = "http://127.0.0.1:9090/healthz"
        )]
        url: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config } => match Settings::load(config.as_deref()) {
            Ok(_) => {
                println!("configuration OK");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("invalid configuration: {e}");
                ExitCode::from(2)
            }
        },
        #[cfg(feature = "demo")]
        Command::Demo => demo(),
        Command::Healthcheck { url } => healthcheck(&url),
        Command::Run { config } => {
            let settings = match Settings::load(config.as_deref()) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("invalid configuration: {e}");
                    return ExitCode::from(2);
                }
            };
            telemetry::init(&settings.log);
            match run(settings) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = format!("{e:#}"), "captain-bridge stopped on error");
                    eprintln!("captain-bridge: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn run(settings: Settings) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    runtime.block_on(async {
        let stop = CancellationToken::new();
        shutdown::cancel_on_signal(stop.clone());
        let app = Application::build(settings).await?;
        // One line on stdout once bound (logs go to stderr): how scripts and tests learn the
        // ports when they ask for port 0.
        // A closed stdout must not stop the bridge: the line is a courtesy.
        let callbacks = match app.callback_addr()? {
            Some(addr) => format!("http://{addr}"),
            None => "off".to_owned(),
        };
        let _ = writeln!(
            std::io::stdout(),
            "captain-bridge listening: callbacks {callbacks} ops http://{}",
            app.ops_addr()?
        );
        app.run_until_stopped(stop).await
    })
}

#[cfg(feature = "demo")]
fn demo() -> ExitCode {
    // Warnings only, so the records printed stay readable; RUST_LOG still wins.
    telemetry::init(&captain_bridge::config::LogSettings {
        format: "text".into(),
        level: "warn".into(),
    });
    let outcome = tokio::runtime::Runtime::new()
        .context("starting the tokio runtime")
        .and_then(|rt| rt.block_on(captain_bridge::demo::run(&mut std::io::stdout())));
    match outcome {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn healthcheck(url: &str) -> ExitCode {
    let answer = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")
        .and_then(|rt| {
            rt.block_on(async {
                let client = reqwest::Client::builder()
                    .timeout(std::time::Duration::from_secs(3))
                    .build()?;
                Ok::<_, anyhow::Error>(client.get(url).send().await?.status())
            })
        });
    match answer {
        Ok(status) if status.is_success() => ExitCode::SUCCESS,
        Ok(status) => {
            eprintln!("healthcheck: {url} answered {status}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("healthcheck: {url}: {e:#}");
            ExitCode::FAILURE
        }
    }
}
