//! The rate limiter for one API key, shared by every task of the instance. The API limits each
//! mode (live, async, schedule, api) separately, so each mode has its own budget: a GCRA bucket
//! (`governor`) at a rate that adapts to the API's 429 answers, and a cooldown after each 429
//! on it. It is the client's `AttemptGate`, so first attempts and retries alike pass it.
//!
//! - `config`: the `[captain.rate_limit]` settings, per-mode overrides, validation;
//! - `meter`: what the API accepted, slot by slot, to read its real limit back;
//! - `adaptive`: the rate, the cooldown and the hold, and how 429s and quiet spells move them;
//! - `gate`: [`AdaptiveLimiter`], a lane per mode: the bucket at its rate, the cooldown wait,
//!   the metrics, and which mode a 429 teaches;
//! - `sim` (tests only): simulated rate-limited APIs and a virtual-time driver.

mod adaptive;
mod config;
mod gate;
mod meter;
#[cfg(test)]
mod sim;

pub use config::{LimiterConfig, LimiterConfigError, ModeOverrides};
pub use gate::AdaptiveLimiter;
