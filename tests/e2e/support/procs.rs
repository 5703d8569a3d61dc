//! The real processes of an end-to-end test: a `captain-sim` and one or more `captain-bridge`
//! instances, each started from its built binary with a config file, and killed on drop.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const API_KEY: &str = "e2e-api-key";
/// Callback keys of the bridge under test: `k2` signs, `k1` still verifies (rotation).
pub const CALLBACK_KEYS: &str =
    "k2:c2Vjb25kLWtleS1zZWNvbmQta2V5LXNlY29uZA==,k1:Zmlyc3Qta2V5LWZpcnN0LWtleS1maXJzdC1rZXk=";

fn target_dir() -> PathBuf {
    // tests run from target/<profile>/deps/<test-binary>
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent()
        .and_then(|deps| deps.parent())
        .map(PathBuf::from)
        .expect("target dir")
}

fn sim_binary() -> PathBuf {
    if let Ok(p) = std::env::var("CAPTAIN_SIM_BIN") {
        return PathBuf::from(p);
    }
    let p = target_dir().join("captain-sim");
    assert!(
        p.exists(),
        "{} not built: run `cargo build --workspace --bins` (scripts/test.sh does)",
        p.display()
    );
    p
}

/// A port free right now (the bridge needs its callback URL before it binds).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn write_temp(name: &str, text: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("{name}-{}.toml", uuid::Uuid::new_v4()));
    std::fs::write(&path, text).expect("write config");
    path
}

/// A running captain-sim process.
pub struct Sim {
    child: Child,
    pub base: String,
    pub config: PathBuf,
}

impl Sim {
    /// Starts captain-sim with `config_toml` and waits for its "listening" line.
    pub fn start(config_toml: &str) -> Self {
        let config = write_temp("captain-sim", config_toml);
        let mut child = Command::new(sim_binary())
            .args(["--listen", "127.0.0.1:0", "--api-key", API_KEY, "--config"])
            .arg(&config)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start captain-sim");
        let stdout = child.stdout.take().expect("sim stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("sim listening line");
        let base = line
            .trim()
            .strip_prefix("captain-sim listening on ")
            .unwrap_or_else(|| panic!("unexpected captain-sim output: {line:?}"))
            .to_owned();
        Self {
            child,
            base,
            config,
        }
    }

    /// The API base handed to the bridge (`.../v4`).
    pub fn api_base(&self) -> String {
        format!("{}/v4", self.base)
    }

    pub async fn stats(&self) -> serde_json::Value {
        reqwest::get(format!("{}/_sim/stats", self.base))
            .await
            .expect("sim stats")
            .json()
            .await
            .expect("sim stats JSON")
    }

    pub async fn set_config(&self, patch: serde_json::Value) {
        let client = reqwest::Client::new();
        let current: serde_json::Value = client
            .get(format!("{}/_sim/config", self.base))
            .send()
            .await
            .expect("sim config")
            .json()
            .await
            .expect("sim config JSON");
        let mut merged = current;
        merge(&mut merged, patch);
        let r = client
            .put(format!("{}/_sim/config", self.base))
            .json(&merged)
            .send()
            .await
            .expect("put sim config");
        assert!(
            r.status().is_success(),
            "sim rejected config: {}",
            r.text().await.unwrap_or_default()
        );
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

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.config);
    }
}

/// A running captain-bridge process.
pub struct Bridge {
    child: Option<Child>,
    env: Vec<(String, String)>,
    pub callback_port: u16,
    pub ops_port: u16,
    pub config: PathBuf,
}

/// What differs between bridges of different tests.
pub struct BridgeOptions<'a> {
    pub topics: &'a super::kafka::Topics,
    pub api_base: String,
    pub bootstrap: String,
    /// Overrides, as environment variables (`CAPTAIN_BRIDGE_<SECTION>__<KEY>`).
    pub env: Vec<(String, String)>,
    /// TOML appended at the end of the config, after the last table (`[log]`): whole tables
    /// only, e.g. `[kafka.properties]` for librdkafka names an env override cannot carry.
    pub extra_toml: String,
}

impl Bridge {
    pub fn config_text(o: &BridgeOptions<'_>, callback_port: u16, ops_port: u16) -> String {
        let t = o.topics;
        format!(
            r#"
[kafka]
bootstrap_servers = "{bootstrap}"
group_id = "{group}"
create_topics = true
partitions = 3
delivery_timeout = "10s"
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
max_backoff = "500ms"
[captain.rate_limit]
rate_per_sec = 2000.0
ceiling_per_sec = 2000.0
burst = 200
[callbacks]
listen = "127.0.0.1:{callback_port}"
public_base_url = "http://127.0.0.1:{callback_port}"
signing_key_id = "k2"
ack_timeout = "3s"
[ops]
listen = "127.0.0.1:{ops_port}"
[shutdown]
drain_timeout = "5s"
[log]
format = "text"
level = "info"
{extra}"#,
            bootstrap = o.bootstrap,
            group = t.group,
            launch = t.launch,
            status = t.status,
            results = t.results,
            dlq = t.dead_letter,
            runs = t.runs,
            control = t.control,
            api = o.api_base,
            extra = o.extra_toml,
        )
    }

    /// Starts the bridge binary and waits until `/readyz` answers 200.
    pub async fn start(o: &BridgeOptions<'_>) -> Self {
        let callback_port = free_port();
        let ops_port = free_port();
        let config = write_temp(
            "captain-bridge",
            &Self::config_text(o, callback_port, ops_port),
        );
        let mut bridge = Self {
            child: None,
            env: o.env.clone(),
            callback_port,
            ops_port,
            config,
        };
        bridge.spawn().await;
        bridge
    }

    async fn spawn(&mut self) {
        let log = std::env::temp_dir().join(format!("captain-bridge-{}.log", self.callback_port));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("bridge log file");
        let child = Command::new(env!("CARGO_BIN_EXE_captain-bridge"))
            .args(["run", "--config"])
            .arg(&self.config)
            .env("CAPTAIN_BRIDGE_API_KEY", API_KEY)
            .env("CAPTAIN_BRIDGE_CALLBACK_KEYS", CALLBACK_KEYS)
            .env_remove("RUST_LOG")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start captain-bridge");
        self.child = Some(child);
        self.wait_ready(Duration::from_secs(60)).await;
    }

    async fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let url = format!("http://127.0.0.1:{}/readyz", self.ops_port);
        loop {
            if let Ok(r) = reqwest::get(&url).await {
                if r.status().is_success() {
                    return;
                }
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "captain-bridge exited during start-up: {status} (log: {})",
                        self.log_path().display()
                    );
                }
            }
            assert!(
                Instant::now() < deadline,
                "captain-bridge not ready in {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The process id of the running bridge (for /proc figures such as RSS).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("bridge running")
    }

    pub fn log_path(&self) -> PathBuf {
        std::env::temp_dir().join(format!("captain-bridge-{}.log", self.callback_port))
    }

    pub fn callback_url(&self, token: &str) -> String {
        format!("http://127.0.0.1:{}/callbacks/{token}", self.callback_port)
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://127.0.0.1:{}/metrics", self.ops_port))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text")
    }

    /// `kill -9`: no shutdown, no flush, no commit.
    pub fn kill_hard(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("bridge running");
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("captain-bridge did not stop within 40 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts the same bridge again (same config, same ports, same group).
    pub async fn restart(&mut self) {
        self.kill_hard();
        self.spawn().await;
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.kill_hard();
        let _ = std::fs::remove_file(&self.config);
    }
}
