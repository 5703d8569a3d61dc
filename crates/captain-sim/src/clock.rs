//! Simulated time: wall time sped up by `time_scale` from the moment the simulator starts.
//! Every timestamp the API shows and every schedule firing uses it.

use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};

/// Maps wall time to simulated time.
#[derive(Debug, Clone, Copy)]
pub struct SimClock {
    real_start: Instant,
    sim_start: DateTime<Utc>,
    scale: f64,
}

impl SimClock {
    /// A clock starting now at `scale` x wall speed.
    pub fn new(scale: f64) -> Self {
        Self {
            real_start: Instant::now(),
            sim_start: Utc::now(),
            scale,
        }
    }

    /// Simulated now.
    pub fn now(&self) -> DateTime<Utc> {
        let elapsed = self.real_start.elapsed().as_secs_f64() * self.scale;
        self.sim_start + chrono::Duration::microseconds((elapsed * 1e6) as i64)
    }

    /// Wall duration of a simulated duration.
    pub fn real(&self, sim: Duration) -> Duration {
        sim.div_f64(self.scale)
    }

    /// Wall duration of `ms` simulated milliseconds.
    pub fn real_ms(&self, ms: u64) -> Duration {
        self.real(Duration::from_millis(ms))
    }

    /// Wall duration until simulated instant `at` (zero when past).
    pub fn real_until(&self, at: DateTime<Utc>) -> Duration {
        (at - self.now())
            .to_std()
            .map(|d| self.real(d))
            .unwrap_or(Duration::ZERO)
    }
}

/// The API's timestamp format: RFC 3339, UTC, milliseconds.
pub fn format_ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}
