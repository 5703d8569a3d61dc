//! Integration tests: the simulator in-process on 127.0.0.1:0, a real axum receiver for
//! callbacks, reqwest as the client, every response validated against the official spec.

// Test helpers panic on purpose: a failed setup is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

mod actions;
mod callbacks;
mod faults;
mod lifecycle;
mod live;
mod process;
mod ratelimits;
mod schedules;
mod security;
mod stalls;
mod truth;
mod validation;

// The v3 API (workflows, jobs, webhooks).
mod v3_auth;
mod v3_faults;
mod v3_jobs;
mod v3_launch;
mod v3_support;
mod v3_webhooks;
