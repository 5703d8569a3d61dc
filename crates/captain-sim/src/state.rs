//! The shared state every handler and background task holds an `Arc` of: configuration
//! (static and runtime-tunable), clock, spec, records, counters, limiter, HTTP client.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::{watch, Notify, Semaphore};

use crate::clock::SimClock;
use crate::config::{RuntimeConfig, SimConfig};
use crate::faults::FaultInjector;
use crate::ratelimit::RateLimiter;
use crate::spec::Spec;
use crate::stats::Stats;
use crate::store::{Owner, Store};

/// Who is calling: the API key and the workspace it opens.
#[derive(Debug, Clone)]
pub struct Caller {
    pub key: Arc<str>,
    pub owner: Owner,
}

/// Everything shared.
#[derive(Debug)]
pub struct SimState {
    pub config: SimConfig,
    runtime: RwLock<Arc<RuntimeConfig>>,
    pub clock: SimClock,
    pub spec: Arc<Spec>,
    pub store: Store,
    pub stats: Stats,
    pub limiter: RateLimiter,
    pub faults: FaultInjector,
    pub http: reqwest::Client,
    /// Callback POSTs in flight, across runs (sized from `delivery.concurrency` at start).
    pub delivery_slots: Semaphore,
    pub keys: HashMap<String, Owner>,
    next_seq: AtomicU64,
    next_run_seq: AtomicU64,
    shutdown: watch::Receiver<bool>,
    /// Wakes the scheduler when a schedule is created or resumed.
    pub schedule_wake: Notify,
}

impl SimState {
    /// Builds the state; `shutdown` flips to `true` when the simulator stops.
    pub fn new(
        config: SimConfig,
        spec: Arc<Spec>,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Self, reqwest::Error> {
        let keys = config
            .effective_keys()
            .iter()
            .map(|k| {
                (
                    k.key.clone(),
                    Owner {
                        workspace_uid: k.workspace(),
                        user_uid: k.user(),
                    },
                )
            })
            .collect();
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(config.runtime.delivery.concurrency.max(1))
            .user_agent(concat!("captain-sim/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            runtime: RwLock::new(Arc::new(config.runtime.clone())),
            clock: SimClock::new(config.time_scale),
            spec,
            store: Store::default(),
            stats: Stats::default(),
            limiter: RateLimiter::default(),
            faults: FaultInjector::new(config.seed),
            http,
            delivery_slots: Semaphore::new(config.runtime.delivery.concurrency),
            keys,
            next_seq: AtomicU64::new(1),
            next_run_seq: AtomicU64::new(1),
            shutdown,
            schedule_wake: Notify::new(),
            config,
        })
    }

    /// The runtime-tunable configuration now in force.
    pub fn runtime(&self) -> Arc<RuntimeConfig> {
        self.runtime
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Replaces the runtime-tunable configuration.
    pub fn set_runtime(&self, runtime: RuntimeConfig) {
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
        self.limiter.reset();
    }

    /// Next sequence number (run ids, record ordering, per-run seeds).
    pub fn next_seq(&self) -> u64 {
        self.next_seq.fetch_add(1, Ordering::Relaxed)
    }

    /// Next run number: run ids and per-run seeds. Only runs draw from it, so the n-th run
    /// gets the same seed whatever else happens concurrently.
    pub fn next_run_seq(&self) -> u64 {
        self.next_run_seq.fetch_add(1, Ordering::Relaxed)
    }

    /// True once shutdown started.
    pub fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Sleeps `wall` unless shutdown starts first; answers false on shutdown.
    pub async fn sleep(&self, wall: Duration) -> bool {
        let mut shutdown = self.shutdown.clone();
        if *shutdown.borrow() {
            return false;
        }
        tokio::select! {
            _ = tokio::time::sleep(wall) => true,
            _ = shutdown.wait_for(|stop| *stop) => false,
        }
    }

    /// Waits for `notify` unless shutdown starts first; answers false on shutdown.
    pub async fn wait(&self, notify: &Notify) -> bool {
        let mut shutdown = self.shutdown.clone();
        if *shutdown.borrow() {
            return false;
        }
        tokio::select! {
            _ = notify.notified() => true,
            _ = shutdown.wait_for(|stop| *stop) => false,
        }
    }
}
