//! The scenarios, and what they share: the broker address, the work directory, timing options,
//! and helpers that start the bridge the way every scenario does.

pub mod backlog;
pub mod ceiling;
pub mod intake;
pub mod launch;
pub mod rate;
pub mod restore;

use crate::procs::Topics;
use crate::sample;
use crate::summary::{RunFigures, Summary};
use captain_bridge::config::Settings;
use std::path::PathBuf;
use std::time::Duration;

/// Partitions of every bench topic (the bridge's default).
pub const PARTITIONS: i32 = 6;

/// Settings shared by all scenarios.
#[derive(Debug, Clone)]
pub struct Timing {
    pub warmup: Duration,
    pub duration: Duration,
    pub repeats: usize,
}

/// Everything a scenario needs from the command line and the environment.
pub struct Ctx {
    pub bootstrap: String,
    /// Configs and logs of the processes started (`<out>/work`).
    pub work: PathBuf,
    pub timing: Timing,
    /// The broker's PID (from `scripts/bench.sh`), to report its CPU too.
    pub broker_pid: Option<String>,
    pub http: reqwest::Client,
    pub summary: Summary,
    /// Extra librdkafka properties for the bridges (experiments).
    pub bridge_properties: Vec<(String, String)>,
    /// `launch.max_in_flight` of every bridge.
    pub max_in_flight: usize,
}

impl Ctx {
    /// A bridge's settings on `topics`, with an effectively unlimited rate limiter (the API
    /// is the simulator, unlimited) and quiet logs.
    pub fn bridge_settings(&self, topics: &Topics, api_base: &str) -> Settings {
        let mut s = captain_testkit::bridge_settings(&self.bootstrap, api_base);
        topics.apply(&mut s);
        s.kafka.partitions = PARTITIONS;
        s.captain.max_backoff = Duration::from_secs(1);
        s.captain.rate_limit.rate_per_sec = 100_000.0;
        s.captain.rate_limit.ceiling_per_sec = 100_000.0;
        s.captain.rate_limit.burst = 10_000;
        s.callbacks.ack_timeout = Settings::default().callbacks.ack_timeout;
        s.launch.max_in_flight = self.max_in_flight;
        s.kafka
            .properties
            .extend(self.bridge_properties.iter().cloned());
        s.log.format = "json".into();
        s.log.level = "warn".into();
        s
    }

    /// Fresh topics named for `name`, created with `settings`' specs, and the settings on them.
    pub async fn fresh_topics(
        &self,
        name: &str,
        api_base: &str,
    ) -> anyhow::Result<(Topics, Settings)> {
        let topics = Topics::unique("bench", name);
        let settings = self.bridge_settings(&topics, api_base);
        topics.create(&settings).await?;
        Ok((topics, settings))
    }

    /// Pids whose CPU is reported besides the bridge's: the bench itself and the broker.
    pub fn side_pids(&self) -> Vec<(&'static str, String)> {
        let mut v = vec![("bench", "self".to_owned())];
        if let Some(p) = &self.broker_pid {
            v.push(("broker", p.clone()));
        }
        v
    }
}

/// CPU windows over the bridge and the side processes of one measurement.
pub struct CpuProbe {
    bridge: sample::CpuWindow,
    sides: Vec<(&'static str, sample::CpuWindow)>,
    bridge_pids: Vec<String>,
}

impl CpuProbe {
    pub fn start(ctx: &Ctx, bridge_pids: &[String], extra: &[(&'static str, String)]) -> Self {
        let mut sides: Vec<(&'static str, sample::CpuWindow)> = ctx
            .side_pids()
            .into_iter()
            .map(|(name, pid)| (name, sample::CpuWindow::start(&[pid])))
            .collect();
        for (name, pid) in extra {
            sides.push((name, sample::CpuWindow::start(std::slice::from_ref(pid))));
        }
        Self {
            bridge: sample::CpuWindow::start(bridge_pids),
            sides,
            bridge_pids: bridge_pids.to_vec(),
        }
    }

    /// Adds `bridge_cpu_pct`, `<side>_cpu_pct`, `bridge_rss_mib`, `bridge_peak_rss_mib`.
    pub fn finish(&self, figures: &mut RunFigures) {
        figures.put("bridge_cpu_pct", "% core", self.bridge.percent());
        for (name, w) in &self.sides {
            figures.put(&format!("{name}_cpu_pct"), "% core", w.percent());
        }
        let (rss, hwm) = sample::rss_mib(&self.bridge_pids);
        figures.put("bridge_rss_mib", "MiB", rss);
        figures.put("bridge_peak_rss_mib", "MiB", hwm);
    }
}
