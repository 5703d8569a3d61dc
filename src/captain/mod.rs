//! The Captain Data v4 API client: wire types exactly per the OpenAPI document, error
//! classification in one place, retries with capped jittered backoff, and 429 handling that
//! honours `Retry-After`.

mod client;
mod error;
pub mod limiter;
mod retry;
pub mod wire;

pub use client::{
    CaptainClient, ClientBuildError, ClientConfig, ScheduleCommand, CALLBACKS_PAGE_SIZE,
};
pub use error::{AttemptError, SubmitError};
pub use limiter::{AdaptiveLimiter, LimiterConfig, LimiterConfigError, ModeOverrides};
pub use retry::{rate_limit_wait, AttemptGate, RateLimitAnswer, RateMode, RetryPolicy};
pub use wire::{
    AcceptedStatus, ApiError, AsyncRunAccepted, AsyncRunBody, CallbackDeliveryStatus,
    CallbackRecord, CallbackTarget, ExecutionMode, Run, RunCallback, RunLastError, Schedule,
    ScheduleAccepted, ScheduleRunBody, ScheduleStatus,
};
