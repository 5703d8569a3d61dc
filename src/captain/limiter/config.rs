//! The limiter's settings (`[captain.rate_limit]`), their defaults and their validation. The
//! table's own keys apply to every mode; `[captain.rate_limit.live]` (`async`, `schedule`, `api`)
//! overrides any of the pacing keys for that mode alone.

use crate::captain::retry::RateMode;
use std::time::Duration;

/// How the limiter of one key paces attempts and adapts to 429 answers: the
/// `[captain.rate_limit]` table of the configuration. Each mode (live, async, schedule, api) has
/// its own budget, paced and learned separately with these settings unless its own table
/// overrides some. Set `rate_per_sec`/`ceiling_per_sec` to the plan's rate; a rate above the
/// real limit converges down to it on 429s (to the rate the API accepted between two 429s),
/// holds there, and probes back up.
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
    /// Overrides for live calls (`[captain.rate_limit.live]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live: Option<ModeOverrides>,
    /// Overrides for async submissions (`[captain.rate_limit.async]`).
    #[serde(default, rename = "async", skip_serializing_if = "Option::is_none")]
    pub async_: Option<ModeOverrides>,
    /// Overrides for schedule submissions (`[captain.rate_limit.schedule]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<ModeOverrides>,
    /// Overrides for runs, callbacks and schedules management (`[captain.rate_limit.api]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<ModeOverrides>,
}

/// The pacing keys of one mode that differ from `[captain.rate_limit]`; each is optional and
/// means the same as the key of that name there. `key_name` and `pause_consumer_after` are the
/// key's, not a mode's, so they are refused here.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModeOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_per_sec: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub floor_per_sec: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ceiling_per_sec: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decrease_factor: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub increase_per_sec: Option<f64>,
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub probe_interval: Option<Duration>,
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub max_probe_hold: Option<Duration>,
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub default_cooldown: Option<Duration>,
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub max_cooldown: Option<Duration>,
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
            live: None,
            async_: None,
            schedule: None,
            api: None,
        }
    }
}

/// A limiter setting out of range; names the field, under its mode's table if it is a mode's
/// (`live.rate_per_sec`).
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("invalid limiter setting {field}: {reason}")]
pub struct LimiterConfigError {
    pub field: String,
    pub reason: String,
}

impl LimiterConfig {
    /// The overrides of `mode`, if its table is present.
    pub fn overrides(&self, mode: RateMode) -> Option<&ModeOverrides> {
        match mode {
            RateMode::Live => self.live.as_ref(),
            RateMode::Async => self.async_.as_ref(),
            RateMode::Schedule => self.schedule.as_ref(),
            RateMode::Api => self.api.as_ref(),
        }
    }

    /// The settings `mode` runs with: these, with its overrides applied (and no overrides left).
    pub fn for_mode(&self, mode: RateMode) -> LimiterConfig {
        let o = self.overrides(mode).cloned().unwrap_or_default();
        LimiterConfig {
            key_name: self.key_name.clone(),
            rate_per_sec: o.rate_per_sec.unwrap_or(self.rate_per_sec),
            burst: o.burst.unwrap_or(self.burst),
            floor_per_sec: o.floor_per_sec.unwrap_or(self.floor_per_sec),
            ceiling_per_sec: o.ceiling_per_sec.unwrap_or(self.ceiling_per_sec),
            decrease_factor: o.decrease_factor.unwrap_or(self.decrease_factor),
            increase_per_sec: o.increase_per_sec.unwrap_or(self.increase_per_sec),
            probe_interval: o.probe_interval.unwrap_or(self.probe_interval),
            max_probe_hold: o.max_probe_hold.unwrap_or(self.max_probe_hold),
            default_cooldown: o.default_cooldown.unwrap_or(self.default_cooldown),
            max_cooldown: o.max_cooldown.unwrap_or(self.max_cooldown),
            pause_consumer_after: self.pause_consumer_after,
            live: None,
            async_: None,
            schedule: None,
            api: None,
        }
    }

    /// Checks every field, then every mode's settings with its overrides applied; the error
    /// names the first field out of range (`rate_per_sec`, or `live.rate_per_sec` when only
    /// the live mode's settings are wrong).
    pub fn validate(&self) -> Result<(), LimiterConfigError> {
        self.validate_fields()?;
        for mode in RateMode::ALL {
            if self.overrides(mode).is_some() {
                self.for_mode(mode)
                    .validate_fields()
                    .map_err(|e| LimiterConfigError {
                        field: format!("{}.{}", mode.as_str(), e.field),
                        reason: e.reason,
                    })?;
            }
        }
        Ok(())
    }

    fn validate_fields(&self) -> Result<(), LimiterConfigError> {
        let fail = |field: &str, reason: String| {
            Err(LimiterConfigError {
                field: field.to_owned(),
                reason,
            })
        };
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

    #[test]
    fn a_mode_table_overrides_only_the_keys_it_sets() {
        let config = LimiterConfig {
            rate_per_sec: 40.0,
            ceiling_per_sec: 40.0,
            live: Some(ModeOverrides {
                rate_per_sec: Some(2.0),
                ceiling_per_sec: Some(2.0),
                max_cooldown: Some(Duration::from_secs(30)),
                ..ModeOverrides::default()
            }),
            ..LimiterConfig::default()
        };
        let live = config.for_mode(RateMode::Live);
        assert_eq!(
            (live.rate_per_sec, live.ceiling_per_sec, live.max_cooldown),
            (2.0, 2.0, Duration::from_secs(30))
        );
        assert_eq!((live.burst, live.floor_per_sec), (5, 0.5));
        assert_eq!(live.live, None);
        let asynchronous = config.for_mode(RateMode::Async);
        assert_eq!(
            asynchronous,
            LimiterConfig {
                live: None,
                ..config.clone()
            }
        );
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn a_mode_table_out_of_range_is_refused_with_the_mode_and_the_field_named() {
        let config = LimiterConfig {
            async_: Some(ModeOverrides {
                rate_per_sec: Some(20.0),
                ..ModeOverrides::default()
            }),
            ..LimiterConfig::default()
        };
        let err = config.validate().unwrap_err();
        assert_eq!(err.field, "async.rate_per_sec");
        assert_eq!(
            err.to_string(),
            "invalid limiter setting async.rate_per_sec: must be within [0.5, 10], got 20"
        );
    }

    fn load(env: &[(&str, &str)]) -> Result<LimiterConfig, crate::config::ConfigError> {
        let secrets = [
            ("CAPTAIN_BRIDGE_API_KEY", "key"),
            (
                "CAPTAIN_BRIDGE_CALLBACK_KEYS",
                "k1:c2VjcmV0LXNlY3JldC1zZWNyZXQ=",
            ),
        ];
        let env = secrets
            .iter()
            .chain(env)
            .map(|(k, v)| (k.to_string(), v.to_string()));
        crate::config::Settings::load_from(None, env).map(|s| s.captain.rate_limit)
    }

    #[test]
    fn a_configuration_without_mode_tables_loads_unchanged_with_every_mode_on_the_same_settings() {
        let config = load(&[("CAPTAIN_BRIDGE_CAPTAIN__RATE_LIMIT__RATE_PER_SEC", "8")]).unwrap();
        assert_eq!(config.rate_per_sec, 8.0);
        for mode in RateMode::ALL {
            assert_eq!(config.overrides(mode), None);
            assert_eq!(config.for_mode(mode), config);
        }
    }

    #[test]
    fn a_mode_table_is_read_from_the_environment_too_async_included() {
        let config = load(&[
            ("CAPTAIN_BRIDGE_CAPTAIN__RATE_LIMIT__ASYNC__BURST", "7"),
            (
                "CAPTAIN_BRIDGE_CAPTAIN__RATE_LIMIT__LIVE__MAX_COOLDOWN",
                "30s",
            ),
        ])
        .unwrap();
        assert_eq!(config.for_mode(RateMode::Async).burst, 7);
        assert_eq!(
            config.for_mode(RateMode::Live).max_cooldown,
            Duration::from_secs(30)
        );
        assert_eq!(
            config.for_mode(RateMode::Schedule),
            config.for_mode(RateMode::Api)
        );
    }

    #[test]
    fn a_key_that_is_not_a_mode_setting_is_refused_in_a_mode_table() {
        let err = load(&[("CAPTAIN_BRIDGE_CAPTAIN__RATE_LIMIT__LIVE__KEY_NAME", "x")]).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("captain.rate_limit.live"), "{text}");
        assert!(text.contains("key_name"), "{text}");
        let err = load(&[(
            "CAPTAIN_BRIDGE_CAPTAIN__RATE_LIMIT__LIVE__RATE_PER_SEC",
            "40",
        )])
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("captain.rate_limit.live.rate_per_sec:"),
            "{err}"
        );
    }
}
