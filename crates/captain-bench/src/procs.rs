//! The processes under measurement, from the shared harness (`captain-testkit`): captain-sim
//! and captain-bridge started from the release binaries next to this one (or the binaries
//! named by `TESTKIT_BRIDGE_BIN` / `TESTKIT_SIM_BIN`, for A/B runs), killed on drop.

use captain_bridge::config::Settings;
use std::path::Path;

pub use captain_testkit::{
    BridgeProcess as Bridge, SimProcess as Sim, Topics, CALLBACK_KEYS, SIGNING_KID,
};

/// Starts `n` bridges of one group (one after the other: each joins, the group rebalances).
pub async fn start_bridges(
    work: &Path,
    settings: &Settings,
    n: usize,
) -> anyhow::Result<Vec<Bridge>> {
    let mut bridges = Vec::with_capacity(n);
    for _ in 0..n {
        bridges.push(Bridge::start(work, settings, &[]).await?);
    }
    Ok(bridges)
}

/// The process ids, as the CPU and memory samplers take them.
pub fn pids(bridges: &[Bridge]) -> Vec<String> {
    bridges
        .iter()
        .filter_map(Bridge::pid)
        .map(|p| p.to_string())
        .collect()
}

/// The sum of the samples of `prefix` in one bridge's `/metrics`.
pub async fn metric(bridge: &Bridge, prefix: &str) -> anyhow::Result<f64> {
    Ok(captain_testkit::metrics::sum(
        &bridge.metrics().await?,
        prefix,
    ))
}
