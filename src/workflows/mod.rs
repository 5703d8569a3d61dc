//! v3 workflows (`mode: "workflow"`): the `[v3]` settings, how a v3 job is routed back to its
//! request (a signed token in the job name, [`job_name`]), the `POST /webhooks/v3` endpoint
//! ([`webhook`]) and its metrics. The owner side (launching jobs, reading their results) is in
//! `owner::v3_jobs` and `owner::core::workflow`; the decisions in `domain::workflow`.

pub mod job_name;
pub mod metrics;
pub mod settings;
pub mod webhook;
pub mod wiring;

pub use metrics::V3Metrics;
pub use settings::V3Settings;
pub use webhook::{webhook_router, WebhookState};
