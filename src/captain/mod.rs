//! The Captain Data v4 API client: wire types exactly per the OpenAPI document, error
//! classification in one place, retries with capped jittered backoff, 429 handling that
//! honours `Retry-After`, and live calls with their pagination.

mod client;
mod error;
pub mod limiter;
mod live;
mod retry;
#[cfg(test)]
mod scripted;
pub mod wire;

pub use client::{
    CaptainClient, ClientBuildError, ClientConfig, ScheduleCommand, CALLBACKS_PAGE_SIZE,
};
pub use error::{AttemptError, SubmitError};
pub use limiter::{AdaptiveLimiter, LimiterConfig, LimiterConfigError};
pub use live::{LiveFailure, LivePage, LivePager, LiveResults, NextPage, MAX_LIVE_PAGES};
pub use retry::{rate_limit_wait, AttemptGate, RateMode, RetryPolicy};
pub use wire::{
    AcceptedStatus, ApiError, AsyncRunAccepted, AsyncRunBody, CallbackDeliveryStatus,
    CallbackRecord, CallbackTarget, ExecutionMode, LiveRunBody, Run, RunCallback, RunLastError,
    Schedule, ScheduleAccepted, ScheduleRunBody, ScheduleStatus,
};
