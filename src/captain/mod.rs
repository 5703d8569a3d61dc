//! The Captain Data v4 API client: wire types exactly per the OpenAPI document, error
//! classification in one place, retries with capped jittered backoff, 429 handling that
//! honours `Retry-After`, and live calls with their pagination. [`v3`] is the client of the
//! previous API generation (workflows and jobs), on the same request path; [`v3_wire`] holds
//! its bodies and status mapping.

mod client;
mod error;
pub mod limiter;
mod live;
mod retry;
#[cfg(test)]
mod scripted;
pub mod v3;
pub mod v3_wire;
pub mod wire;

pub use client::{
    CaptainClient, ClientBuildError, ClientConfig, ScheduleCommand, CALLBACKS_PAGE_SIZE,
};
pub use error::{AttemptError, SubmitError};
pub use limiter::{AdaptiveLimiter, LimiterConfig, LimiterConfigError, ModeOverrides};
pub use live::{
    LiveFailure, LivePage, LivePager, LiveResults, LiveResume, NextPage, MAX_LIVE_PAGES,
};
pub use retry::{rate_limit_wait, AttemptGate, RateLimitAnswer, RateMode, RetryPolicy};
pub use wire::{
    AcceptedStatus, ApiError, AsyncRunAccepted, AsyncRunBody, CallbackDeliveryStatus,
    CallbackRecord, CallbackTarget, ExecutionMode, LiveRunBody, Run, RunCallback, RunLastError,
    Schedule, ScheduleAccepted, ScheduleRunBody, ScheduleStatus,
};
