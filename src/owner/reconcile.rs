//! The reconciler's API calls, made off the owner's loop like submissions: polling a run,
//! listing its deliveries still in flight or failed, replaying failed ones, asking for a
//! schedule's state. Every call goes through the key's rate limiter (the client's gate) and,
//! before it, through a pacer holding reconcile calls to `max_rate_share` of the key's current
//! rate, so a backlog of silent runs cannot starve launches. Results go back to the owner as
//! [`JobMessage`]s; what they mean is decided there (`domain::reconcile`).

use super::jobs::{JobMessage, JobReports};
use crate::captain::{
    AdaptiveLimiter, CallbackDeliveryStatus, CaptainClient, Run, ScheduleStatus, SubmitError,
    CALLBACKS_PAGE_SIZE,
};
use crate::domain::reconcile::{Delivery, DeliveryState};
use crate::domain::{RunStatus, StatusError};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// A reconcile call that got no usable answer: what went wrong, and whether asking again can
/// help (a 404 for a run the API does not know cannot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckFailure {
    pub message: String,
    pub permanent: bool,
}

impl From<SubmitError> for CheckFailure {
    fn from(e: SubmitError) -> Self {
        Self {
            permanent: !e.is_retriable(),
            message: e.to_string(),
        }
    }
}

/// Pages of deliveries read per check at most (20 each): a run with more failed deliveries
/// than this is audited again for the rest.
const MAX_DELIVERY_PAGES: u32 = 25;

/// Which run a check is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RunRef {
    pub request_id: String,
    pub partition: i32,
    pub chunk: u32,
    pub run_uid: String,
}

/// What a poll said of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct Polled {
    /// `None`: the API answered with no status this client knows.
    pub status: Option<RunStatus>,
    pub error: Option<StatusError>,
}

/// Makes the reconciler's API calls.
pub struct Reconciler {
    pub client: Arc<CaptainClient>,
    pub limiter: Arc<AdaptiveLimiter>,
    pub max_rate_share: f64,
    /// When the next reconcile call may start.
    next: Mutex<Instant>,
}

impl Reconciler {
    pub fn new(
        client: Arc<CaptainClient>,
        limiter: Arc<AdaptiveLimiter>,
        max_rate_share: f64,
    ) -> Self {
        Self {
            client,
            limiter,
            max_rate_share,
            next: Mutex::new(Instant::now()),
        }
    }

    /// Waits for this call's slot: reconcile calls are spaced to `max_rate_share` of the
    /// limiter's current rate (which follows the key's learned limit).
    pub(super) async fn pace(&self) {
        let rate = (self.limiter.current_rate() * self.max_rate_share).max(0.05);
        let gap = Duration::from_secs_f64(1.0 / rate);
        let at = {
            let mut next = self.next.lock().await;
            let now = Instant::now();
            let at = (*next).max(now);
            *next = at + gap;
            at
        };
        tokio::time::sleep_until(at).await;
    }

    /// Polls the run (when `poll`) and lists its deliveries in flight or failed.
    pub fn spawn_check(self: &Arc<Self>, run: RunRef, poll: bool, reports: JobReports) {
        let this = self.clone();
        tokio::spawn(async move {
            let polled = if poll {
                this.pace().await;
                Some(
                    this.client
                        .get_run(&run.run_uid)
                        .await
                        .map(polled)
                        .map_err(CheckFailure::from),
                )
            } else {
                None
            };
            let deliveries = this.run_deliveries(&run.run_uid).await;
            reports.send(JobMessage::Checked {
                run,
                polled,
                deliveries,
            });
        });
    }

    /// Audits `runs` with as few calls as it can: one listing for the whole batch (the
    /// `run_uid` filter is an array), falling back to one listing per run when the batch's
    /// listing is refused (one bad uid must not fail the others) or does not fit in
    /// [`MAX_DELIVERY_PAGES`].
    pub fn spawn_audit(self: &Arc<Self>, runs: Vec<RunRef>, reports: JobReports) {
        let this = self.clone();
        tokio::spawn(async move {
            let uids: Vec<&str> = runs.iter().map(|r| r.run_uid.as_str()).collect();
            let batch = match this.deliveries(&uids).await {
                Ok(Some(found)) => Some(Ok(found)),
                Ok(None) => None,
                Err(e) if runs.len() > 1 && !e.is_retriable() => None,
                Err(e) => Some(Err(CheckFailure::from(e))),
            };
            let mut checked = Vec::with_capacity(runs.len());
            match batch {
                Some(Ok(mut found)) => {
                    for run in runs {
                        let deliveries = found.remove(&run.run_uid).unwrap_or_default();
                        checked.push((run, Ok(deliveries)));
                    }
                }
                Some(Err(e)) => checked.extend(runs.into_iter().map(|run| (run, Err(e.clone())))),
                None => {
                    for run in runs {
                        let one = this.run_deliveries(&run.run_uid).await;
                        checked.push((run, one));
                    }
                }
            }
            reports.send(JobMessage::Audited { checked });
        });
    }

    /// One run's deliveries in flight or failed.
    async fn run_deliveries(&self, run_uid: &str) -> Result<Vec<Delivery>, CheckFailure> {
        match self.deliveries(&[run_uid]).await {
            Ok(Some(mut found)) => Ok(found.remove(run_uid).unwrap_or_default()),
            Ok(None) => Err(CheckFailure {
                message: format!(
                    "more than {} deliveries in flight or failed",
                    MAX_DELIVERY_PAGES * CALLBACKS_PAGE_SIZE
                ),
                permanent: false,
            }),
            Err(e) => Err(CheckFailure::from(e)),
        }
    }

    /// The deliveries in flight or failed of `run_uids`, by run; `None` when they do not fit
    /// in [`MAX_DELIVERY_PAGES`] pages.
    pub(super) async fn deliveries(
        &self,
        run_uids: &[&str],
    ) -> Result<Option<HashMap<String, Vec<Delivery>>>, SubmitError> {
        let statuses = [
            CallbackDeliveryStatus::Pending,
            CallbackDeliveryStatus::Running,
            CallbackDeliveryStatus::Failed,
        ];
        let mut out: HashMap<String, Vec<Delivery>> = HashMap::new();
        for page in 0..MAX_DELIVERY_PAGES {
            self.pace().await;
            let records = self
                .client
                .list_callbacks(run_uids, &statuses, page * CALLBACKS_PAGE_SIZE)
                .await?;
            let n = records.len();
            for r in records {
                let state = match r.status {
                    Some(CallbackDeliveryStatus::Failed) => DeliveryState::Failed,
                    Some(CallbackDeliveryStatus::Pending | CallbackDeliveryStatus::Running) => {
                        DeliveryState::InFlight
                    }
                    _ => continue,
                };
                // A record without its run can only be attributed when one run was asked for.
                let single = || (run_uids.len() == 1).then(|| run_uids[0].to_owned());
                let Some(run_uid) = r.run_uid.or_else(single) else {
                    continue;
                };
                out.entry(run_uid).or_default().push(Delivery {
                    uid: r.uid,
                    parent_uid: r.parent_uid,
                    batch_uid: r.batch_uid,
                    state,
                });
            }
            if n < CALLBACKS_PAGE_SIZE as usize {
                return Ok(Some(out));
            }
        }
        Ok(None)
    }

    /// Replays `originals` (callback_uid, batch_uid). A replay the API refuses for good (the
    /// limit of 3 reached elsewhere, a replay of a replay) exhausts that original's budget.
    pub fn spawn_replays(
        self: &Arc<Self>,
        run: RunRef,
        originals: Vec<(String, Option<String>)>,
        reports: JobReports,
    ) {
        let this = self.clone();
        tokio::spawn(async move {
            let mut requested = Vec::new();
            let mut exhausted = Vec::new();
            for (uid, batch) in originals {
                this.pace().await;
                match this.client.replay_callback(&uid).await {
                    Ok(_) => requested.push((uid, batch)),
                    Err(SubmitError::Rejected { http_status, error }) if http_status < 500 => {
                        tracing::warn!(request_id = %run.request_id, run_uid = %run.run_uid,
                            callback_uid = %uid, error = %error, "replay refused by the API");
                        exhausted.push(uid);
                    }
                    Err(e) => {
                        // Retriable, or retries exhausted: the next audit tries again.
                        tracing::warn!(request_id = %run.request_id, callback_uid = %uid,
                            error = %e, "replay not requested");
                    }
                }
            }
            reports.send(JobMessage::Replayed {
                run,
                requested,
                exhausted,
            });
        });
    }

    /// Asks for a schedule's state.
    pub fn spawn_schedule_check(
        self: &Arc<Self>,
        request_id: String,
        partition: i32,
        chunk: u32,
        schedule_uid: String,
        reports: JobReports,
    ) {
        let this = self.clone();
        tokio::spawn(async move {
            this.pace().await;
            let status = this
                .client
                .get_schedule(&schedule_uid)
                .await
                .map(|s| {
                    s.status
                        .map(schedule_status)
                        .unwrap_or("UNKNOWN")
                        .to_owned()
                })
                .map_err(|e| e.to_string());
            reports.send(JobMessage::ScheduleChecked {
                request_id,
                partition,
                chunk,
                status,
            });
        });
    }
}

/// What a run object says of the run's status.
pub fn polled(run: Run) -> Polled {
    Polled {
        status: run.status,
        error: run.last_error.map(|e| StatusError {
            label: e.label,
            scope: None,
            message: e.message.unwrap_or_default(),
            http_status: None,
        }),
    }
}

/// The API's spelling of a schedule's state.
pub fn schedule_status(s: ScheduleStatus) -> &'static str {
    match s {
        ScheduleStatus::Active => "ACTIVE",
        ScheduleStatus::Paused => "PAUSED",
        ScheduleStatus::Cancelled => "CANCELLED",
        ScheduleStatus::Completed => "COMPLETED",
        ScheduleStatus::Unknown => "UNKNOWN",
    }
}
