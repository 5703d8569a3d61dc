//! The limiter's settings (`[captain.rate_limit]`), their defaults and their validation.

use std::time::Duration;

/// How the limiter of one key paces attempts and adapts to 429 answers: the
/// `[captain.rate_limit]` table of the configuration. Set `rate_per_sec`/`ceiling_per_sec` to
/// the plan's rate; a rate above the real limit converges down to it on 429s (to the rate the
/// API accepted between two 429s), holds there, and probes back up.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimiterConfig {
    /// Name of the key in metrics (`key` label): a configured name, never the secret.
    pub key_name: String,
    /// Starting rate (requests per second); may be above the API's real limit.
    pub rate_per_sec: f64,
    /// Attempts allowed back to back before pacing applies.
    pub burst: u32,
    /// The rate never drops below this, however many 429s come.
    pub floor_per_sec: f64,
    /// The rate never probes above this.
    pub ceiling_per_sec: f64,
    /// Deepest cut of a 429 (rate multiplier), and the cut applied when the accepted rate
    /// cannot be measured: at most once per cooldown and once per `probe_interval`, since the
    /// 429s of one burst arrive together and one cut is enough.
    pub decrease_factor: f64,
    /// Requests per second added back for each second without a 429 (additive increase).
    pub increase_per_sec: f64,
    /// Quiet time (no 429, no rate change) before each additive step.
    #[serde(with = "humantime_serde")]
    pub probe_interval: Duration,
    /// Longest hold at a measured limit before probing above it again.
    #[serde(with = "humantime_serde")]
    pub max_probe_hold: Duration,
    /// Cooldown after a 429 that says neither `Retry-After` nor `X-RateLimit-Reset`.
    #[serde(with = "humantime_serde")]
    pub default_cooldown: Duration,
    /// Longest cooldown honoured, whatever the API asks; the client gives up on its own budget.
    #[serde(with = "humantime_serde")]
    pub max_cooldown: Duration,
    /// Not the limiter's own: a cooldown longer than this pauses the launch partitions (the
    /// consumer keeps polling, so it stays in its group) instead of piling requests up in
    /// memory.
    #[serde(with = "humantime_serde")]
    pub pause_consumer_after: Duration,
}

impl Default for LimiterConfig {
    /// Sized for the "Mid" plan tier (10 req/s): the rate starts at the ceiling, drops to the
    /// measured limit (by 30 % at most) per 429 and, after a hold, climbs back by 5 % of it per
    /// quiet second.
    fn default() -> Self {
        Self {
            key_name: "default".into(),
            rate_per_sec: 10.0,
            burst: 5,
            floor_per_sec: 0.5,
            ceiling_per_sec: 10.0,
            decrease_factor: 0.7,
            increase_per_sec: 0.5,
            probe_interval: Duration::from_secs(1),
            max_probe_hold: Duration::from_secs(60),
            default_cooldown: Duration::from_secs(1),
            max_cooldown: Duration::from_secs(300),
            pause_consumer_after: Duration::from_secs(2),
        }
    }
}

/// A limiter setting out of range; names the field.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("invalid limiter setting {field}: {reason}")]
pub struct LimiterConfigError {
    pub field: &'static str,
    pub reason: String,
}

impl LimiterConfig {
    /// Checks every field; the error names the first one out of range.
    pub fn validate(&self) -> Result<(), LimiterConfigError> {
        let fail = |field, reason: String| Err(LimiterConfigError { field, reason });
        let positive = |v: f64| v.is_finite() && v > 0.0;
        if self.key_name.trim().is_empty() {
            return fail("key_name", "must not be empty".into());
        }
        if !positive(self.floor_per_sec) {
            return fail(
                "floor_per_sec",
                format!("must be > 0, got {}", self.floor_per_sec),
            );
        }
        if !positive(self.ceiling_per_sec) || self.ceiling_per_sec < self.floor_per_sec {
            return fail(
                "ceiling_per_sec",
                format!(
                    "must be ≥ floor_per_sec ({}), got {}",
                    self.floor_per_sec, self.ceiling_per_sec
                ),
            );
        }
        if !(self.rate_per_sec.is_finite()
            && (self.floor_per_sec..=self.ceiling_per_sec).contains(&self.rate_per_sec))
        {
            return fail(
                "rate_per_sec",
                format!(
                    "must be within [{}, {}], got {}",
                    self.floor_per_sec, self.ceiling_per_sec, self.rate_per_sec
                ),
            );
        }
        if self.burst == 0 {
            return fail("burst", "must be ≥ 1".into());
        }
        if !(self.decrease_factor > 0.0 && self.decrease_factor < 1.0) {
            return fail(
                "decrease_factor",
                format!("must be within (0, 1), got {}", self.decrease_factor),
            );
        }
        if !(self.increase_per_sec.is_finite() && self.increase_per_sec >= 0.0) {
            return fail(
                "increase_per_sec",
                format!("must be ≥ 0, got {}", self.increase_per_sec),
            );
        }
        if self.probe_interval.is_zero() {
            return fail("probe_interval", "must be > 0".into());
        }
        if self.max_probe_hold < self.probe_interval {
            return fail(
                "max_probe_hold",
                format!("must be ≥ probe_interval ({:?})", self.probe_interval),
            );
        }
        if self.default_cooldown > self.max_cooldown {
            return fail(
                "default_cooldown",
                format!("must be ≤ max_cooldown ({:?})", self.max_cooldown),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn a_config_out_of_range_is_refused_with_the_field_named() {
        let floor_above_ceiling = LimiterConfig {
            floor_per_sec: 20.0,
            ..LimiterConfig::default()
        };
        assert_eq!(
            floor_above_ceiling.validate().unwrap_err().field,
            "ceiling_per_sec"
        );
        let no_decrease = LimiterConfig {
            decrease_factor: 1.0,
            ..LimiterConfig::default()
        };
        let err = no_decrease.validate().unwrap_err();
        assert_eq!(err.field, "decrease_factor");
        assert!(err.to_string().contains("decrease_factor"));
        let rate_above_ceiling = LimiterConfig {
            rate_per_sec: 11.0,
            ..LimiterConfig::default()
        };
        assert_eq!(
            rate_above_ceiling.validate().unwrap_err().field,
            "rate_per_sec"
        );
        assert_eq!(LimiterConfig::default().validate(), Ok(()));
    }
}
