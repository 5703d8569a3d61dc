//! `captain-sim --listen ADDR [--api-key KEY]... [--config FILE]`: runs the simulator until
//! Ctrl-C or SIGTERM. Prints exactly one line on stdout once bound:
//! `captain-sim listening on http://IP:PORT`; logs go to stderr.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use captain_sim::{SimConfig, Simulator};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "captain-sim", version, about = "Captain Data v4 API simulator")]
struct Cli {
    /// Address to listen on, e.g. 127.0.0.1:8089 (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8089")]
    listen: String,
    /// Accepted API key (repeatable; each key is its own workspace). Adds to the file's keys.
    #[arg(long = "api-key")]
    api_keys: Vec<String>,
    /// TOML configuration file.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Seed of every random decision (overrides the file).
    #[arg(long)]
    seed: Option<u64>,
    /// Simulated-time speed-up (overrides the file).
    #[arg(long)]
    time_scale: Option<f64>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "captain_sim=info".into()),
        )
        .init();
    let cli = Cli::parse();
    let mut config = match &cli.config {
        Some(path) => SimConfig::from_file(path)?,
        None => SimConfig::default(),
    };
    for key in cli.api_keys {
        config = config.with_api_key(key);
    }
    if let Some(seed) = cli.seed {
        config.seed = seed;
    }
    if let Some(scale) = cli.time_scale {
        config.time_scale = scale;
    }
    let listener = tokio::net::TcpListener::bind(&cli.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cli.listen))?;
    let handle = Simulator::start(config, listener)?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "captain-sim listening on http://{}", handle.addr())?;
        out.flush()?;
    }
    shutdown_signal().await;
    handle.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
    tracing::info!("shutdown signal received");
}
