//! The project's one test harness, shared by the end-to-end tests (`tests/e2e`) and the
//! benchmark (`crates/captain-bench`):
//! - [`topics`]: unique topic names per test, created through the bridge's own topic specs;
//! - [`config`]: a bridge configuration built as the bridge's own `Settings` and serialized, so
//!   a renamed key cannot silently diverge from what the harness writes;
//! - [`procs`]: captain-sim and captain-bridge processes started from their built binaries,
//!   their ports learned from their "listening" line (they bind port 0), killed on drop;
//! - [`kafka`]: a producer of launch requests, collectors of what the bridge publishes, and a
//!   broker of a test's own;
//! - [`metrics`]: reading values out of a Prometheus scrape;
//! - [`toxiproxy`]: a client of Toxiproxy's API, for faults between the bridge and Kafka or
//!   the API.

pub mod bins;
pub mod config;
pub mod kafka;
pub mod metrics;
pub mod procs;
pub mod topics;
pub mod toxiproxy;

pub use config::{bridge_settings, API_KEY, CALLBACK_KEYS, SIGNING_KID};
pub use procs::{BridgeProcess, SimProcess};
pub use topics::Topics;
