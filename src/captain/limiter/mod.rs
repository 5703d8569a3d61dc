//! The rate limiter for one API key, shared by every task of the instance: a GCRA bucket
//! (`governor`) at a rate that adapts to the API's 429 answers, and a key-wide cooldown after
//! each 429. It is the client's `AttemptGate`, so first attempts and retries alike pass it.
//!
//! - `config`: the `[captain.rate_limit]` settings and their validation;
//! - `meter`: what the API accepted, slot by slot, to read its real limit back;
//! - `adaptive`: the rate, the cooldown and the hold, and how 429s and quiet spells move them;
//! - `gate`: [`AdaptiveLimiter`], the bucket at that rate, the cooldown wait, the metrics;
//! - `sim` (tests only): simulated rate-limited APIs and a virtual-time driver.

mod adaptive;
mod config;
mod gate;
mod meter;
#[cfg(test)]
mod sim;

pub use config::{LimiterConfig, LimiterConfigError};
pub use gate::AdaptiveLimiter;
