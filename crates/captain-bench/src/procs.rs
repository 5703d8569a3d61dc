//! The processes under measurement: captain-sim and captain-bridge started from the release
//! binaries next to this one, each with a config file and env secrets, killed on drop.

use anyhow::{bail, Context};
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const API_KEY: &str = "bench-api-key";
/// The callback keys given to every bridge; the bench signs its callback URLs with them.
pub const CALLBACK_KEYS: &str = "kb:YmVuY2gta2V5LWJlbmNoLWtleS1iZW5jaC1rZXktYmVuY2g=";
pub const SIGNING_KID: &str = "kb";

/// The directory holding the binaries (`target/release` when the bench runs from there).
fn bin_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("bench binary path")?;
    exe.parent()
        .map(Path::to_path_buf)
        .context("bench binary has no directory")
}

/// `BENCH_BRIDGE_BIN` / `BENCH_SIM_BIN` override the binaries (A/B runs of two builds).
fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let var = format!(
        "BENCH_{}_BIN",
        name.trim_start_matches("captain-").to_uppercase()
    );
    let p = match std::env::var_os(var) {
        Some(p) => PathBuf::from(p),
        None => bin_dir()?.join(name),
    };
    if !p.exists() {
        bail!(
            "{} not built: run `cargo build --release --workspace --bins` (scripts/bench.sh does)",
            p.display()
        );
    }
    Ok(p)
}

pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn write_config(dir: &Path, name: &str, text: &str) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("{name}-{}.toml", uuid::Uuid::new_v4().simple()));
    std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
    Ok(path)
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// A running captain-sim.
pub struct Sim {
    child: Child,
    pub base: String,
}

impl Sim {
    /// Starts captain-sim with `config_toml` and waits for its "listening" line.
    pub fn start(work: &Path, config_toml: &str) -> anyhow::Result<Self> {
        let config = write_config(work, "captain-sim", config_toml)?;
        let mut child = Command::new(binary("captain-sim")?)
            .args(["--listen", "127.0.0.1:0", "--api-key", API_KEY, "--config"])
            .arg(&config)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("start captain-sim")?;
        let stdout = child.stdout.take().context("captain-sim stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let Some(base) = line.trim().strip_prefix("captain-sim listening on ") else {
            kill(&mut child);
            bail!("unexpected captain-sim output: {line:?}");
        };
        Ok(Self {
            base: base.to_owned(),
            child,
        })
    }

    pub fn pid(&self) -> String {
        self.child.id().to_string()
    }

    pub fn api_base(&self) -> String {
        format!("{}/v4", self.base)
    }

    pub async fn stats(&self, http: &reqwest::Client) -> anyhow::Result<serde_json::Value> {
        Ok(http
            .get(format!("{}/_sim/stats", self.base))
            .send()
            .await?
            .json()
            .await?)
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

/// The topics and group of one measurement.
#[derive(Debug, Clone)]
pub struct Topics {
    pub launch: String,
    pub status: String,
    pub results: String,
    pub dead_letter: String,
    pub runs: String,
    pub control: String,
    pub group: String,
}

impl Topics {
    pub fn unique(name: &str) -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let t = |suffix: &str| format!("bench.{name}.{}.{suffix}", &id[..8]);
        Self {
            launch: t("launch"),
            status: t("status"),
            results: t("results"),
            dead_letter: t("dlq"),
            runs: t("runs"),
            control: t("control"),
            group: format!("bench-{name}-{}", &id[..8]),
        }
    }
}

/// What a bridge is started with.
#[derive(Debug, Clone)]
pub struct BridgeSpec {
    pub bootstrap: String,
    pub topics: Topics,
    pub api_base: String,
    /// Partitions of the topics the bridge creates.
    pub partitions: u32,
    /// The `[captain.rate_limit]` table's body.
    pub rate_limit: String,
    pub max_in_flight: usize,
    /// librdkafka properties for every client of the bridge (`[kafka.properties]`).
    pub kafka_properties: Vec<(String, String)>,
}

impl BridgeSpec {
    fn config_text(&self, callback_port: u16, ops_port: u16) -> String {
        let t = &self.topics;
        format!(
            r#"[kafka]
bootstrap_servers = "{bootstrap}"
group_id = "{group}"
create_topics = true
partitions = {partitions}
[kafka.topics]
launch_requests = "{launch}"
run_status = "{status}"
run_results = "{results}"
dead_letter = "{dlq}"
runs = "{runs}"
control = "{control}"
[captain]
base_url = "{api}"
initial_backoff = "50ms"
max_backoff = "1s"
[captain.rate_limit]
{rate_limit}
[callbacks]
listen = "127.0.0.1:{callback_port}"
public_base_url = "http://127.0.0.1:{callback_port}"
signing_key_id = "{SIGNING_KID}"
[ops]
listen = "127.0.0.1:{ops_port}"
[launch]
max_in_flight = {max_in_flight}
[shutdown]
drain_timeout = "5s"
[log]
format = "json"
level = "warn"
[kafka.properties]
{properties}
"#,
            bootstrap = self.bootstrap,
            group = t.group,
            partitions = self.partitions,
            launch = t.launch,
            status = t.status,
            results = t.results,
            dlq = t.dead_letter,
            runs = t.runs,
            control = t.control,
            api = self.api_base,
            rate_limit = self.rate_limit,
            max_in_flight = self.max_in_flight,
            properties = self
                .kafka_properties
                .iter()
                .map(|(k, v)| format!("{k:?} = {v:?}\n"))
                .collect::<String>(),
        )
    }
}

/// A running captain-bridge.
pub struct Bridge {
    child: Child,
    pub callback_port: u16,
    pub ops_port: u16,
}

impl Bridge {
    /// Starts the release binary and waits until `/readyz` answers 200.
    pub async fn start(work: &Path, spec: &BridgeSpec) -> anyhow::Result<Self> {
        let (callback_port, ops_port) = (free_port()?, free_port()?);
        let config = write_config(
            work,
            "captain-bridge",
            &spec.config_text(callback_port, ops_port),
        )?;
        let log = work.join(format!("captain-bridge-{callback_port}.log"));
        let log_file = std::fs::File::create(&log)?;
        let child = Command::new(binary("captain-bridge")?)
            .args(["run", "--config"])
            .arg(&config)
            .env("CAPTAIN_BRIDGE_API_KEY", API_KEY)
            .env("CAPTAIN_BRIDGE_CALLBACK_KEYS", CALLBACK_KEYS)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .context("start captain-bridge")?;
        let mut bridge = Self {
            child,
            callback_port,
            ops_port,
        };
        bridge
            .wait_ready(Duration::from_secs(60))
            .await
            .with_context(|| format!("bridge log: {}", log.display()))?;
        Ok(bridge)
    }

    async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let url = format!("http://127.0.0.1:{}/readyz", self.ops_port);
        loop {
            if let Ok(r) = reqwest::get(&url).await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("captain-bridge exited during start-up: {status}");
            }
            if Instant::now() > deadline {
                bail!("captain-bridge not ready within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn pid(&self) -> String {
        self.child.id().to_string()
    }

    pub fn callback_base(&self) -> String {
        format!("http://127.0.0.1:{}", self.callback_port)
    }

    /// The value of one metric line (`name{labels}`) summed over matching lines.
    pub async fn metric(&self, http: &reqwest::Client, prefix: &str) -> anyhow::Result<f64> {
        let text = http
            .get(format!("http://127.0.0.1:{}/metrics", self.ops_port))
            .send()
            .await?
            .text()
            .await?;
        Ok(sum_metric(&text, prefix))
    }
}

/// Sums the values of the lines of a Prometheus text that start with `prefix`.
pub fn sum_metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

impl Drop for Bridge {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

/// Starts `n` bridges of one group (one after the other: each joins, the group rebalances).
pub async fn start_bridges(
    work: &Path,
    spec: &BridgeSpec,
    n: usize,
) -> anyhow::Result<Vec<Bridge>> {
    let mut bridges = Vec::with_capacity(n);
    for _ in 0..n {
        bridges.push(Bridge::start(work, spec).await?);
    }
    Ok(bridges)
}

pub fn pids(bridges: &[Bridge]) -> Vec<String> {
    bridges.iter().map(Bridge::pid).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_lines_are_summed_by_prefix() {
        let text = "# HELP x\nx_total{topic=\"a\"} 2\nx_total{topic=\"b\"} 3.5\ny_total 9\n";
        assert_eq!(sum_metric(text, "x_total"), 5.5);
        assert_eq!(sum_metric(text, "x_total{topic=\"b\"}"), 3.5);
        assert_eq!(sum_metric(text, "z"), 0.0);
    }
}
