//! The Captain Data **v3** API (workflows, jobs, webhooks), the generation before v4, served
//! under `/v3` beside the v4 surface.
//!
//! A request passes the gate in [`api`] (`Authorization: x-api-key <KEY>` + `x-project-id`,
//! the per-key bucket, injected 5xx), then a handler. `POST /workflows/{uid}/schedule` is
//! checked by [`validate`] and creates a job in [`jobs`], whose engine drives it through the
//! v3 statuses, generating result rows and sending the workflow's webhooks through
//! [`webhooks`]. [`control`] adds the `/_sim/v3` test routes (config, webhooks, ground
//! truth); [`stats`] holds the counters shown in `/_sim/stats`. Module map: `config`
//! (the `[v3]` section), `api`, `validate`, `jobs`, `webhooks`, `control`, `stats`.

pub mod api;
pub mod config;
pub mod control;
pub mod jobs;
pub mod stats;
pub mod validate;
pub mod webhooks;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use axum::Router;
use chrono::{DateTime, Utc};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::Serialize;
use tokio::sync::{watch, Semaphore};
use uuid::Uuid;

use crate::config::ConfigError;
use crate::spec::ActionSpec;
use crate::state::SimState;

pub use config::{
    V3BehaviourConfig, V3Config, V3DeliveryConfig, V3FaultsConfig, V3HeaderConfig,
    V3OutcomesConfig, V3PathsConfig, V3ProjectConfig, V3RateLimit, V3ResultsConfig, V3RetryAfter,
    V3RuntimeConfig, V3SuccessStatus, V3TimingsConfig, V3WebhookConfig, V3WebhookEvent,
    V3WorkflowConfig,
};

/// A project (workspace) one API key opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Project {
    pub uid: Uuid,
    /// The small integer the launch answer shows as `workflow.project_id`.
    pub id: u64,
}

/// Who is calling.
#[derive(Debug, Clone)]
pub struct Caller {
    pub key: Arc<str>,
    pub project: Project,
}

/// A configured workflow; only its webhook can change at run time.
#[derive(Debug)]
pub struct Workflow {
    pub uid: Uuid,
    pub name: String,
    pub project_uid: Option<Uuid>,
    pub steps: Vec<Uuid>,
    pub input_key: Option<String>,
    pub action: Arc<ActionSpec>,
    pub results_per_input: u64,
    pub created_at: DateTime<Utc>,
    webhook: RwLock<Option<Arc<V3WebhookConfig>>>,
}

impl Workflow {
    /// The webhook in force, if any.
    pub fn webhook(&self) -> Option<Arc<V3WebhookConfig>> {
        self.webhook
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Replaces (or removes) the webhook.
    pub fn set_webhook(&self, hook: Option<V3WebhookConfig>) {
        *self
            .webhook
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = hook.map(Arc::new);
    }

    /// Whether `project` sees this workflow.
    pub fn visible_to(&self, project: &Project) -> bool {
        self.project_uid.is_none_or(|p| p == project.uid)
    }

    /// The workflow object of `GET /workflows` and of the launch answer.
    pub fn view(&self, project: &Project) -> WorkflowView {
        WorkflowView {
            uid: self.uid,
            name: self.name.clone(),
            permalink: permalink(&self.name, self.uid),
            created_at: ts(self.created_at),
            project_id: project.id,
            linked_templates: Vec::new(),
            template_uid: None,
        }
    }
}

/// The workflow object (fields of the API reference's launch example).
#[derive(Debug, Serialize)]
pub struct WorkflowView {
    pub uid: Uuid,
    pub name: String,
    pub permalink: String,
    pub created_at: String,
    pub project_id: u64,
    pub linked_templates: Vec<Uuid>,
    pub template_uid: Option<Uuid>,
}

fn permalink(name: &str, uid: Uuid) -> String {
    let slug: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    format!("{}{uid}", slug.trim_matches('-'))
}

/// A per-key token bucket.
#[derive(Debug)]
struct TokenBucket {
    tokens: f64,
    last: Instant,
    limit: (f64, u32),
}

/// Everything the v3 surface shares.
#[derive(Debug)]
pub struct V3State {
    pub sim: Arc<SimState>,
    projects: HashMap<String, Project>,
    workflows: Vec<Arc<Workflow>>,
    pub paths: V3PathsConfig,
    max_jobs: usize,
    runtime: RwLock<Arc<V3RuntimeConfig>>,
    jobs: Mutex<jobs::JobStore>,
    buckets: Mutex<HashMap<String, TokenBucket>>,
    request_rng: Mutex<StdRng>,
    /// Webhook POSTs in flight (sized from `delivery.concurrency`; grows at run time).
    pub delivery_slots: Semaphore,
    next_job_seq: AtomicU64,
}

impl V3State {
    /// Builds the v3 state from the `[v3]` section of the simulator config.
    pub fn new(sim: Arc<SimState>) -> Result<Self, ConfigError> {
        let config = sim.config.v3.clone();
        config.validate()?;
        let projects: HashMap<String, Project> = if config.projects.is_empty() {
            // No v3 project configured: every v4 key opens its workspace as a v3 project.
            sim.config
                .effective_keys()
                .iter()
                .enumerate()
                .map(|(i, k)| {
                    (
                        k.key.clone(),
                        Project {
                            uid: k.workspace(),
                            id: i as u64 + 1,
                        },
                    )
                })
                .collect()
        } else {
            config
                .projects
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    (
                        p.key.clone(),
                        Project {
                            uid: p.project(),
                            id: i as u64 + 1,
                        },
                    )
                })
                .collect()
        };
        let now = sim.clock.now();
        let mut workflows = Vec::new();
        for (i, w) in config.effective_workflows().into_iter().enumerate() {
            let action = sim.spec.action(&w.action).cloned().ok_or_else(|| {
                ConfigError::Invalid(format!(
                    "v3.workflows[{i}].action: {:?} is not an action of the v4 spec",
                    w.action
                ))
            })?;
            workflows.push(Arc::new(Workflow {
                uid: w.uid(),
                steps: w.step_uids(),
                name: w.name,
                project_uid: w.project_uid,
                input_key: w.input_key,
                action,
                results_per_input: w.results_per_input,
                created_at: now,
                webhook: RwLock::new(w.webhook.map(Arc::new)),
            }));
        }
        Ok(Self {
            request_rng: Mutex::new(StdRng::seed_from_u64(sim.config.seed ^ 0x7633_fa17)),
            delivery_slots: Semaphore::new(config.runtime.delivery.concurrency),
            runtime: RwLock::new(Arc::new(config.runtime)),
            projects,
            workflows,
            paths: config.paths,
            max_jobs: config.max_jobs,
            jobs: Mutex::new(jobs::JobStore::default()),
            buckets: Mutex::new(HashMap::new()),
            next_job_seq: AtomicU64::new(1),
            sim,
        })
    }

    /// The runtime-tunable configuration now in force.
    pub fn runtime(&self) -> Arc<V3RuntimeConfig> {
        self.runtime
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Replaces the runtime-tunable configuration (validated by the caller); resets buckets.
    pub fn set_runtime(&self, runtime: V3RuntimeConfig) {
        let old = self.runtime();
        let grow = runtime
            .delivery
            .concurrency
            .saturating_sub(old.delivery.concurrency);
        if grow > 0 {
            self.delivery_slots.add_permits(grow);
        }
        *self
            .runtime
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(runtime);
        self.lock_buckets().clear();
    }

    /// The project an API key opens.
    pub fn project_of(&self, key: &str) -> Option<Project> {
        self.projects.get(key).copied()
    }

    /// The API keys accepted on `/v3`.
    pub fn keys(&self) -> Vec<(String, Uuid)> {
        self.projects
            .iter()
            .map(|(k, p)| (k.clone(), p.uid))
            .collect()
    }

    /// Every workflow.
    pub fn workflows(&self) -> &[Arc<Workflow>] {
        &self.workflows
    }

    /// One workflow by uid.
    pub fn workflow(&self, uid: Uuid) -> Option<&Arc<Workflow>> {
        self.workflows.iter().find(|w| w.uid == uid)
    }

    /// Next job number (per-job seeds).
    pub(crate) fn next_job_seq(&self) -> u64 {
        self.next_job_seq.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn jobs(&self) -> MutexGuard<'_, jobs::JobStore> {
        self.jobs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn max_jobs(&self) -> usize {
        self.max_jobs
    }

    fn lock_buckets(&self) -> MutexGuard<'_, HashMap<String, TokenBucket>> {
        self.buckets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes a token from `key`'s bucket, or answers how long until one is available.
    pub(crate) fn take_token(&self, key: &str, limit: &V3RateLimit) -> Result<(), Duration> {
        let now = Instant::now();
        let mut buckets = self.lock_buckets();
        let wanted = (limit.rps, limit.burst);
        let bucket = buckets.entry(key.to_owned()).or_insert(TokenBucket {
            tokens: f64::from(limit.burst),
            last: now,
            limit: wanted,
        });
        if bucket.limit != wanted {
            *bucket = TokenBucket {
                tokens: f64::from(limit.burst),
                last: now,
                limit: wanted,
            };
        }
        let refill = now.duration_since(bucket.last).as_secs_f64() * limit.rps;
        bucket.tokens = (bucket.tokens + refill).min(f64::from(limit.burst));
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / limit.rps))
        }
    }

    /// Runs `f` with the request-fault generator (one generator, request order).
    pub(crate) fn with_request_rng<R>(&self, f: impl FnOnce(&mut StdRng) -> R) -> R {
        let mut rng = self
            .request_rng
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut rng)
    }

    /// Sleeps `wall` unless the job's epoch moves on (retry, cancel, eviction) or the
    /// simulator shuts down; true when the sleep ran to its end with the epoch unchanged.
    pub(crate) async fn pause(
        &self,
        wake: &mut watch::Receiver<u64>,
        epoch: u64,
        wall: Duration,
    ) -> bool {
        if *wake.borrow() != epoch {
            return false;
        }
        let ran = tokio::select! {
            ran = self.sim.sleep(wall) => ran,
            _ = wake.wait_for(|e| *e != epoch) => false,
        };
        ran && *wake.borrow() == epoch
    }
}

/// The v3 timestamp format of the API reference's example (`2024-10-26T22:35:35.803378`):
/// naive ISO 8601 in UTC with microseconds.
pub fn ts(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6f").to_string()
}

/// Builds the `/v3` routes and the `/_sim/v3` control routes.
pub fn router(v3: Arc<V3State>) -> Router {
    api::routes(v3.clone()).merge(control::routes(v3))
}
