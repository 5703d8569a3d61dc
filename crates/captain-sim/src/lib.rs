//! captain-sim: a local simulator of the Captain Data v4 REST API, faithful to the official
//! OpenAPI document bundled in `spec/`.
//!
//! A request enters through [`api`] (auth, rate limits, faults, then a handler), which
//! validates bodies with [`spec`], and either answers at once (live), starts a run in
//! [`lifecycle`] (async), or records a schedule that [`schedules`] fires later. Runs produce
//! paged results ([`generate`]) that [`delivery`] POSTs to the caller's callback URL,
//! recording each delivery in [`store`]. [`stats`] counts everything for `/_sim/stats`.
//! [`v3`] serves the previous API generation (workflows, jobs, webhooks) under `/v3`.
//!
//! Module map: `config` (settings), `spec` (OpenAPI document and validators), `generate`
//! (fake results), `api` (routes), `lifecycle` (run engine), `delivery` (callback sender),
//! `schedules` (cron and scheduler), `ratelimit`, `faults`, `stats`, `store` (records),
//! `clock` (simulated time), `error` (APIError answers), `state` (shared state).

pub mod api;
pub mod clock;
pub mod config;
pub mod delivery;
pub mod error;
pub mod faults;
pub mod generate;
pub mod lifecycle;
pub mod ratelimit;
pub mod schedules;
pub mod spec;
pub mod state;
pub mod stats;
pub mod store;
pub mod v3;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use config::{
    ApiKeyConfig, ConfigError, DeliveryConfig, FaultsConfig, LimitsConfig, OutcomesConfig,
    RateLimit, RateLimitsConfig, ResultsConfig, RetryAfterFormat, RuntimeConfig, SimConfig,
    TimingsConfig,
};

/// Errors starting the simulator.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Spec(#[from] spec::SpecError),
    #[error("cannot build the callback http client: {0}")]
    Http(#[from] reqwest::Error),
    #[error("cannot read the listener address: {0}")]
    Io(#[from] std::io::Error),
}

/// Entry point.
#[derive(Debug)]
pub struct Simulator;

impl Simulator {
    /// Starts serving on `listener` (bind `127.0.0.1:0` for tests) and returns at once.
    /// Must be called within a tokio runtime.
    pub fn start(config: SimConfig, listener: TcpListener) -> Result<SimHandle, SimError> {
        config.validate()?;
        let addr = listener.local_addr()?;
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let state = Arc::new(state::SimState::new(
            config,
            spec::spec()?,
            shutdown_rx.clone(),
        )?);
        let v3 = Arc::new(v3::V3State::new(state.clone())?);
        let router = api::router(state.clone()).merge(v3::router(v3.clone()));
        let mut server_shutdown = shutdown_rx;
        let server = tokio::spawn(async move {
            let served = axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = server_shutdown.wait_for(|stop| *stop).await;
                })
                .await;
            if let Err(error) = served {
                tracing::error!(%error, "captain-sim server stopped with an error");
            }
        });
        let scheduler = tokio::spawn(schedules::run(state.clone()));
        tracing::info!(%addr, "captain-sim started");
        Ok(SimHandle {
            addr,
            state,
            v3,
            shutdown_tx,
            tasks: vec![server, scheduler],
        })
    }

    /// Serves until `signal` completes, then shuts down gracefully.
    pub async fn serve(
        config: SimConfig,
        listener: TcpListener,
        signal: impl Future<Output = ()>,
    ) -> Result<(), SimError> {
        let handle = Self::start(config, listener)?;
        signal.await;
        handle.shutdown().await;
        Ok(())
    }
}

/// A running simulator.
#[derive(Debug)]
pub struct SimHandle {
    addr: SocketAddr,
    state: Arc<state::SimState>,
    v3: Arc<v3::V3State>,
    shutdown_tx: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl SimHandle {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://IP:PORT/v4`, the API base URL to give a client.
    pub fn base_url(&self) -> String {
        format!("http://{}/v4", self.addr)
    }

    /// `http://IP:PORT`, for the `/_sim` control routes.
    pub fn root_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The API keys accepted.
    pub fn api_keys(&self) -> Vec<String> {
        self.state.keys.keys().cloned().collect()
    }

    /// The runtime-tunable configuration in force.
    pub fn runtime_config(&self) -> RuntimeConfig {
        (*self.state.runtime()).clone()
    }

    /// Replaces the runtime-tunable configuration (same as `PUT /_sim/config`).
    pub fn set_runtime_config(&self, runtime: RuntimeConfig) -> Result<(), ConfigError> {
        runtime.validate()?;
        self.state.set_runtime(runtime);
        Ok(())
    }

    /// `http://IP:PORT/v3`, the v3 API base URL to give a client.
    pub fn v3_base_url(&self) -> String {
        format!("http://{}/v3", self.addr)
    }

    /// The v3 API keys accepted and the project uid each opens (`x-project-id`).
    pub fn v3_projects(&self) -> Vec<(String, uuid::Uuid)> {
        self.v3.keys()
    }

    /// The v3 workflows as `(uid, name)`.
    pub fn v3_workflows(&self) -> Vec<(uuid::Uuid, String)> {
        self.v3
            .workflows()
            .iter()
            .map(|w| (w.uid, w.name.clone()))
            .collect()
    }

    /// Ground truth of a v3 job (same as `GET /_sim/v3/jobs/{uid}`): inputs, result rows,
    /// webhook deliveries. `None` for an unknown job.
    pub fn v3_job(&self, job_uid: uuid::Uuid) -> Option<serde_json::Value> {
        v3::control::ground_truth(&self.v3, job_uid)
    }

    /// Sets (or removes) a v3 workflow's webhook (same as `PUT`/`DELETE
    /// /_sim/v3/workflows/{uid}/webhook`).
    pub fn set_v3_webhook(
        &self,
        workflow_uid: uuid::Uuid,
        webhook: Option<v3::V3WebhookConfig>,
    ) -> Result<(), ConfigError> {
        let workflow = self
            .v3
            .workflow(workflow_uid)
            .ok_or_else(|| ConfigError::Invalid(format!("v3: no workflow {workflow_uid}")))?;
        if let Some(hook) = &webhook {
            hook.validate()
                .map_err(|e| ConfigError::Invalid(format!("v3 webhook.{e}")))?;
        }
        workflow.set_webhook(webhook);
        Ok(())
    }

    /// Replaces the runtime-tunable `[v3]` configuration (same as `PUT /_sim/v3/config`).
    pub fn set_v3_runtime_config(&self, runtime: v3::V3RuntimeConfig) -> Result<(), ConfigError> {
        runtime.validate()?;
        self.v3.set_runtime(runtime);
        Ok(())
    }

    /// Stops accepting requests, stops runs and the scheduler, and waits for them.
    pub async fn shutdown(self) {
        let _ = self.shutdown_tx.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
        tracing::info!(addr = %self.addr, "captain-sim stopped");
    }
}
