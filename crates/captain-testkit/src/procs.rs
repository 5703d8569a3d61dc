//! The real processes of a test or a measurement: captain-sim and captain-bridge, each started
//! from its built binary with a config file, asked to bind port 0, their addresses read from
//! the one line each prints once bound (no pick-a-free-port-then-bind race), killed on drop.

use crate::bins::binary;
use crate::config::{to_toml, API_KEY, CALLBACK_KEYS};
use anyhow::{bail, Context};
use captain_bridge::config::Settings;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

fn write_file(dir: &Path, name: &str, text: &str) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("{name}-{}.toml", uuid::Uuid::new_v4().simple()));
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Reads the child's first stdout line, bounded in time (a process that dies or hangs before
/// printing it must fail the test, not block it).
fn first_line(stdout: ChildStdout, timeout: Duration) -> anyhow::Result<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let read = BufReader::new(stdout).read_line(&mut line).map(|_| line);
        let _ = tx.send(read);
    });
    match rx.recv_timeout(timeout) {
        Ok(read) => Ok(read?),
        Err(_) => bail!("no start-up line within {timeout:?}"),
    }
}

/// A running captain-sim.
pub struct SimProcess {
    child: Child,
    /// `http://127.0.0.1:PORT` (the API is under `/v4`, test control under `/_sim`).
    pub base: String,
    config: PathBuf,
}

impl SimProcess {
    /// Starts captain-sim with the TOML `config` and waits for its "listening" line.
    pub fn start(work: &Path, config: &str) -> anyhow::Result<Self> {
        let config = write_file(work, "captain-sim", config)?;
        let mut child = Command::new(binary("captain-sim")?)
            .args(["--listen", "127.0.0.1:0", "--api-key", API_KEY, "--config"])
            .arg(&config)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting captain-sim")?;
        let stdout = child.stdout.take().context("captain-sim stdout")?;
        let line = match first_line(stdout, Duration::from_secs(30)) {
            Ok(line) => line,
            Err(e) => {
                kill(&mut child);
                return Err(e.context("captain-sim did not start"));
            }
        };
        let Some(base) = line.trim().strip_prefix("captain-sim listening on ") else {
            kill(&mut child);
            bail!("unexpected captain-sim output: {line:?}");
        };
        Ok(Self {
            base: base.to_owned(),
            child,
            config,
        })
    }

    /// The simulator's root URL (its `/_sim/...` endpoints live there).
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The API base handed to the bridge (`.../v4`).
    pub fn api_base(&self) -> String {
        format!("{}/v4", self.base)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `GET /_sim/stats`.
    pub async fn stats(&self) -> anyhow::Result<serde_json::Value> {
        Ok(reqwest::get(format!("{}/_sim/stats", self.base))
            .await?
            .error_for_status()?
            .json()
            .await?)
    }

    /// Merges `patch` into the simulator's runtime config (`PUT /_sim/config` takes it whole).
    pub async fn patch_config(&self, patch: serde_json::Value) -> anyhow::Result<()> {
        let http = reqwest::Client::new();
        let url = format!("{}/_sim/config", self.base);
        let mut config: serde_json::Value = http
            .get(&url)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        merge(&mut config, patch);
        let answer = http.put(&url).json(&config).send().await?;
        if !answer.status().is_success() {
            bail!("captain-sim refused the config: {}", answer.text().await?);
        }
        Ok(())
    }
}

fn merge(base: &mut serde_json::Value, patch: serde_json::Value) {
    match (base, patch) {
        (serde_json::Value::Object(b), serde_json::Value::Object(p)) => {
            for (k, v) in p {
                merge(b.entry(k).or_insert(serde_json::Value::Null), v);
            }
        }
        (b, p) => *b = p,
    }
}

impl Drop for SimProcess {
    fn drop(&mut self) {
        kill(&mut self.child);
        let _ = std::fs::remove_file(&self.config);
    }
}

/// A running captain-bridge.
pub struct BridgeProcess {
    child: Option<Child>,
    settings: Settings,
    env: Vec<(String, String)>,
    work: PathBuf,
    config: PathBuf,
    log: PathBuf,
    /// Where the callback endpoint is bound.
    pub callback_addr: SocketAddr,
    /// Where `/metrics`, `/healthz` and `/readyz` are bound.
    pub ops_addr: SocketAddr,
}

impl BridgeProcess {
    /// Starts the bridge with `settings` (secrets from the harness, `env` on top) and waits
    /// until `/readyz` answers 200. Its log (stderr) goes to a file in `work`.
    pub async fn start(
        work: &Path,
        settings: &Settings,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let mut bridge = Self {
            child: None,
            settings: settings.clone(),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            work: work.to_owned(),
            config: PathBuf::new(),
            log: work.join(format!(
                "captain-bridge-{}.log",
                uuid::Uuid::new_v4().simple()
            )),
            callback_addr: settings.callbacks.listen,
            ops_addr: settings.ops.listen,
        };
        bridge.spawn().await?;
        Ok(bridge)
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let _ = std::fs::remove_file(&self.config);
        self.config = write_file(&self.work, "captain-bridge", &to_toml(&self.settings)?)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let mut child = Command::new(binary("captain-bridge")?)
            .args(["run", "--config"])
            .arg(&self.config)
            .env("CAPTAIN_BRIDGE_API_KEY", API_KEY)
            .env("CAPTAIN_BRIDGE_CALLBACK_KEYS", CALLBACK_KEYS)
            .env_remove("RUST_LOG")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .context("starting captain-bridge")?;
        let stdout = child.stdout.take().context("captain-bridge stdout")?;
        self.child = Some(child);
        let line = first_line(stdout, Duration::from_secs(120)).with_context(|| {
            format!("captain-bridge did not start; log: {}", self.log.display())
        })?;
        let (callback, ops) = parse_listening(&line).with_context(|| {
            format!(
                "unexpected captain-bridge output {line:?}; log: {}",
                self.log.display()
            )
        })?;
        // A restart binds the same ports: callback URLs already handed out stay valid.
        self.callback_addr = callback;
        self.ops_addr = ops;
        self.settings.callbacks.listen = callback;
        self.settings.ops.listen = ops;
        self.wait_ready(Duration::from_secs(120)).await
    }

    async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let url = format!("http://{}/readyz", self.ops_addr);
        loop {
            if let Ok(r) = reqwest::get(&url).await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!(
                        "captain-bridge exited during start-up: {status} (log: {})",
                        self.log.display()
                    );
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "captain-bridge not ready within {timeout:?} (log: {})",
                    self.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The settings it runs with (ports as bound).
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// `http://127.0.0.1:PORT`, the base of callback URLs.
    pub fn callback_base(&self) -> String {
        format!("http://{}", self.callback_addr)
    }

    pub fn callback_url(&self, token: &str) -> String {
        format!("{}/callbacks/{token}", self.callback_base())
    }

    /// The `/metrics` scrape.
    pub async fn metrics(&self) -> anyhow::Result<String> {
        Ok(reqwest::get(format!("http://{}/metrics", self.ops_addr))
            .await?
            .text()
            .await?)
    }

    /// `kill -9`: no shutdown, no flush, no commit.
    pub fn kill_hard(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill(&mut child);
        }
    }

    /// `kill -STOP` / `kill -CONT`: a frozen process keeps its sockets and answers nothing.
    pub fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let pid = self.pid().context("bridge not running")?;
        let status = Command::new("kill")
            .arg(signal)
            .arg(pid.to_string())
            .status()?;
        if !status.success() {
            bail!("kill {signal} {pid} failed");
        }
        Ok(())
    }

    /// SIGTERM, then waits up to `timeout` for the process to exit.
    pub fn terminate(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let mut child = self.child.take().context("bridge not running")?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                kill(&mut child);
                bail!("captain-bridge did not stop within {timeout:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts the same bridge again (same settings, same ports, same group) after a kill.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill_hard();
        self.spawn().await
    }
}

impl Drop for BridgeProcess {
    fn drop(&mut self) {
        self.kill_hard();
        let _ = std::fs::remove_file(&self.config);
    }
}

/// `captain-bridge listening: callbacks http://A ops http://B` → (A, B).
fn parse_listening(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    let rest = line.trim().strip_prefix("captain-bridge listening: ")?;
    let mut words = rest.split_whitespace();
    let mut addr = |label: &str| -> Option<SocketAddr> {
        (words.next()? == label).then_some(())?;
        words.next()?.strip_prefix("http://")?.parse().ok()
    };
    Some((addr("callbacks")?, addr("ops")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listening_line_gives_both_addresses() {
        let line =
            "captain-bridge listening: callbacks http://127.0.0.1:4100 ops http://127.0.0.1:4101\n";
        let (callbacks, ops) = parse_listening(line).unwrap_or_else(|| panic!("{line}"));
        assert_eq!(callbacks.port(), 4100);
        assert_eq!(ops.port(), 4101);
        assert!(parse_listening("captain-bridge listening: ops http://x").is_none());
    }
}
