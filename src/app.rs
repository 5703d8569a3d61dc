//! Wiring: builds every part from the settings, binds the listeners (so callers learn the real
//! ports), runs the launch consumer, the callback server and the ops server until the shutdown
//! token is cancelled or one of them fails, then stops them in order: stop consuming, drain
//! in-flight launches within the deadline, stop accepting callbacks, flush the producer.

use crate::callbacks::{self, CallbackState, Readiness};
use crate::captain::{AdaptiveLimiter, CaptainClient, ClientConfig, RateMode, RetryPolicy};
use crate::config::Settings;
use crate::domain::RunState;
use crate::ingest::CallbackProcessor;
use crate::kafka::{self, LaunchConsumer, RecordProducer, StateView};
use crate::launch::{LaunchProcessor, SubmitSettings};
use crate::locks::RequestLocks;
use crate::metrics::Metrics;
use crate::publish::RecordBuilder;
use crate::telemetry::ErrorChain;
use crate::token::TokenKeys;
use anyhow::Context;
use axum::http::HeaderName;
use secrecy::{ExposeSecret, SecretString};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A built bridge: listeners bound, Kafka connected, not yet serving.
pub struct Application {
    settings: Settings,
    metrics: Metrics,
    readiness: Readiness,
    callback_listener: TcpListener,
    ops_listener: TcpListener,
    producer: Arc<RecordProducer>,
    consumer: LaunchConsumer,
    launch: Arc<LaunchProcessor>,
    callback_state: CallbackState,
    /// Cancelled when the drain deadline passes: in-flight launches give up (and are redone).
    abort: CancellationToken,
    limiter: Arc<AdaptiveLimiter>,
    state: Arc<StateView<RunState>>,
    state_stop: CancellationToken,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let metrics = Metrics::new().context("registering metrics")?;
        let readiness = Readiness::new();
        let keys = Arc::new(token_keys(&settings)?);
        let header_secret = header_secret(&settings)?;

        let callback_listener = TcpListener::bind(settings.callbacks.listen)
            .await
            .with_context(|| {
                format!(
                    "callbacks.listen: cannot bind {}",
                    settings.callbacks.listen
                )
            })?;
        let ops_listener = TcpListener::bind(settings.ops.listen)
            .await
            .with_context(|| format!("ops.listen: cannot bind {}", settings.ops.listen))?;

        let k = &settings.kafka;
        if k.create_topics {
            kafka::ensure_topics(
                &k.bootstrap_servers,
                &topic_specs(&settings),
                Duration::from_secs(30),
            )
            .await
            .context("creating topics")?;
        }
        let producer = Arc::new(
            RecordProducer::new(&producer_config(&settings), metrics.clone())
                .context("creating the Kafka producer")?,
        );
        let state_stop = CancellationToken::new();
        let state = Arc::new(
            StateView::<RunState>::start(state_config(&settings), state_stop.clone())
                .await
                .context("loading the run state topic")?,
        );
        // One limiter for the API key, shared by every call of this instance (retries too).
        let limiter = Arc::new(
            AdaptiveLimiter::new(settings.captain.rate_limit.clone(), metrics.clone())
                .map_err(|e| anyhow::anyhow!("captain.rate_limit.{}: {}", e.field, e.reason))?,
        );
        let client = Arc::new(
            CaptainClient::new(client_config(&settings)?, metrics.clone())
                .context("creating the Captain Data client")?
                .with_gate(limiter.clone()),
        );
        let locks = Arc::new(RequestLocks::default());
        let records = RecordBuilder::new(settings.kafka.topics.clone());
        let abort = CancellationToken::new();

        let launch = Arc::new(LaunchProcessor {
            records: records.clone(),
            producer: producer.clone(),
            state: state.clone(),
            client,
            keys: keys.clone(),
            locks: locks.clone(),
            metrics: metrics.clone(),
            settings: SubmitSettings {
                public_base_url: public_base_url(&settings, callback_listener.local_addr()?),
                header_secret: header_secret
                    .as_ref()
                    .map(|(name, secret)| (name.to_string(), secret.clone())),
                async_max_inputs: settings.captain.async_max_inputs,
                schedule_max_inputs: settings.captain.schedule_max_inputs,
                delivery_timeout: settings.kafka.delivery_timeout,
            },
            shutdown: abort.clone(),
        });
        let sink = Arc::new(CallbackProcessor {
            records,
            producer: producer.clone(),
            state: state.clone(),
            locks,
            metrics: metrics.clone(),
            ack_timeout: settings.callbacks.ack_timeout,
            dedupe_window: settings.callbacks.dedupe_window,
            submit_wait: settings.callbacks.submit_wait,
        });
        let callback_state = CallbackState {
            keys,
            sink,
            max_body_bytes: settings.callbacks.max_body_bytes,
            header_secret,
            metrics: metrics.clone(),
        };
        let consumer = LaunchConsumer::new(consumer_config(&settings), metrics.clone())
            .context("creating the launch consumer")?;

        Ok(Self {
            settings,
            metrics,
            readiness,
            callback_listener,
            ops_listener,
            producer,
            consumer,
            launch,
            callback_state,
            abort,
            limiter,
            state,
            state_stop,
        })
    }

    /// The bound callback address (useful with port 0).
    pub fn callback_addr(&self) -> std::io::Result<SocketAddr> {
        self.callback_listener.local_addr()
    }

    /// The bound `/metrics` `/healthz` `/readyz` address.
    pub fn ops_addr(&self) -> std::io::Result<SocketAddr> {
        self.ops_listener.local_addr()
    }

    /// Serves until `stop` is cancelled or a part fails, then shuts down in order.
    pub async fn run_until_stopped(self, stop: CancellationToken) -> anyhow::Result<()> {
        let Self {
            settings,
            metrics,
            readiness,
            callback_listener,
            ops_listener,
            producer,
            consumer,
            launch,
            callback_state,
            abort,
            limiter,
            state,
            state_stop,
        } = self;

        let ops_stop = CancellationToken::new();
        let ops = tokio::spawn(callbacks::serve(
            ops_listener,
            callbacks::ops_router(metrics.clone(), readiness.clone()),
            ops_stop.clone().cancelled_owned(),
        ));
        let callbacks_stop = CancellationToken::new();
        let mut callback_server = tokio::spawn(callbacks::serve(
            callback_listener,
            callbacks::callback_router(callback_state),
            callbacks_stop.clone().cancelled_owned(),
        ));
        let consume_stop = CancellationToken::new();
        tokio::spawn(pause_during_cooldowns(
            limiter,
            metrics.launch_paused_for_cooldown.clone(),
            consumer.pause_control(),
            settings.captain.rate_limit.pause_consumer_after,
            consume_stop.clone(),
        ));
        let mut consuming = tokio::spawn(consumer.run(launch, consume_stop.clone()));
        readiness.set_ready(true);
        tracing::info!(
            callbacks = %settings.callbacks.listen,
            ops = %settings.ops.listen,
            topic = %settings.kafka.topics.launch_requests,
            "captain-bridge running"
        );

        // Any part that ends on its own ends the process: a bridge that consumes but cannot
        // take callbacks (or the reverse) would silently lose work.
        let mut failure: Option<anyhow::Error> = None;
        tokio::select! {
            () = stop.cancelled() => {}
            r = &mut consuming => failure = Some(ended("launch consumer", r.map(|r| r.map_err(anyhow::Error::from)))),
            r = &mut callback_server => failure = Some(ended("callback server", r.map(|r| r.map_err(anyhow::Error::from)))),
        }
        readiness.set_ready(false);
        tracing::info!("shutting down: stop consuming, drain in-flight launches");

        consume_stop.cancel();
        let drain = settings.shutdown.drain_timeout;
        if !consuming.is_finished() {
            // The consumer drains within `drain`; past it, in-flight launches are abandoned
            // (their offsets are not stored, so they are redone after restart).
            let abort_later = abort.clone();
            let abort_timer = tokio::spawn(async move {
                tokio::time::sleep(drain).await;
                abort_later.cancel();
            });
            match tokio::time::timeout(drain + Duration::from_secs(5), &mut consuming).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => {
                    tracing::error!(error = %ErrorChain(&e), "launch consumer ended with an error")
                }
                Ok(Err(e)) => tracing::error!(error = %e, "launch consumer task failed"),
                Err(_) => tracing::error!("launch consumer did not stop in time"),
            }
            abort_timer.abort();
        }
        abort.cancel();

        tracing::info!("stopping the callback server");
        callbacks_stop.cancel();
        if !callback_server.is_finished() {
            let _ = tokio::time::timeout(Duration::from_secs(10), &mut callback_server).await;
        }
        tracing::info!("flushing the producer");
        // librdkafka's flush blocks its thread until delivered or timed out.
        let flushing = producer.clone();
        let flushed =
            tokio::task::spawn_blocking(move || flushing.flush(Duration::from_secs(10))).await;
        if let Ok(Err(e)) = flushed {
            tracing::error!(error = %e, "producer flush failed");
        }
        state_stop.cancel();
        state.stopped().await;
        ops_stop.cancel();
        let _ = ops.await;
        drop(metrics);
        tracing::info!("captain-bridge stopped");
        match failure {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Pauses the launch partitions while the API key cools down for longer than `threshold`:
/// records stay in Kafka instead of piling up in memory as waiting submissions, and the
/// consumer keeps polling so it stays in its group however long the cooldown.
async fn pause_during_cooldowns(
    limiter: Arc<AdaptiveLimiter>,
    paused_gauge: prometheus::IntGauge,
    pause: Arc<kafka::PauseControl>,
    threshold: Duration,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut paused = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        // Only the submitting modes' cooldowns hold the launch path up.
        let cooldown = limiter.cooling_down(&RateMode::SUBMIT);
        let cooling = cooldown.is_some_and(|(_, left)| left > threshold);
        if cooling != paused {
            paused = cooling;
            paused_gauge.set(i64::from(paused));
            if paused {
                let (mode, left) = cooldown.unzip();
                tracing::warn!(mode = mode.map(RateMode::as_str), cooldown = ?left, "API cooldown: pausing launch partitions");
                pause.pause_all();
            } else {
                tracing::info!("API cooldown over: resuming launch partitions");
                pause.resume_all();
            }
        }
    }
}

fn ended<E: Into<anyhow::Error>>(
    what: &str,
    r: Result<Result<(), anyhow::Error>, E>,
) -> anyhow::Error {
    match r {
        Ok(Ok(())) => anyhow::anyhow!("{what} stopped unexpectedly"),
        Ok(Err(e)) => e.context(format!("{what} failed")),
        Err(e) => e.into().context(format!("{what} task failed")),
    }
}

/// The configured public base URL, or one derived from the bound listener: bound first, so a
/// listen port of 0 (tests, side-by-side instances) gets its real port into the callback URL.
fn public_base_url(settings: &Settings, bound: SocketAddr) -> String {
    if let Some(url) = &settings.callbacks.public_base_url {
        return url.clone();
    }
    let ip = if bound.ip().is_unspecified() {
        std::net::IpAddr::from([127, 0, 0, 1])
    } else {
        bound.ip()
    };
    format!("http://{}", SocketAddr::new(ip, bound.port()))
}

fn token_keys(settings: &Settings) -> anyhow::Result<TokenKeys> {
    let text = settings
        .secrets
        .callback_keys
        .as_ref()
        .context("callbacks.keys: no callback signing keys")?;
    let keys = TokenKeys::from_config(text.expose_secret(), &settings.callbacks.signing_key_id)
        .map_err(|e| anyhow::anyhow!("callbacks.keys: {e}"))?;
    Ok(keys)
}

fn header_secret(settings: &Settings) -> anyhow::Result<Option<(HeaderName, SecretString)>> {
    let Some(secret) = settings.secrets.callback_header_secret.clone() else {
        return Ok(None);
    };
    let name = HeaderName::try_from(settings.callbacks.header_name.as_str())
        .map_err(|e| anyhow::anyhow!("callbacks.header_name: {e}"))?;
    Ok(Some((name, secret)))
}

fn client_config(settings: &Settings) -> anyhow::Result<ClientConfig> {
    let c = &settings.captain;
    Ok(ClientConfig {
        base_url: c.base_url.clone(),
        api_key: settings
            .secrets
            .api_key
            .clone()
            .context("captain.api_key: no API key")?,
        request_timeout: c.request_timeout,
        retry: RetryPolicy {
            max_attempts: c.max_attempts,
            initial_backoff: c.initial_backoff,
            max_backoff: c.max_backoff,
            max_rate_limit_wait: c.max_rate_limit_wait,
        },
    })
}

/// The topics the bridge creates (when `kafka.create_topics`) and checks at start-up.
pub fn topic_specs(settings: &Settings) -> Vec<kafka::TopicSpec> {
    let k = &settings.kafka;
    let t = &k.topics;
    let plain = |name: &str| kafka::TopicSpec {
        name: name.to_owned(),
        partitions: k.partitions,
        replication: k.replication_factor,
        config: Vec::new(),
    };
    vec![
        plain(&t.launch_requests),
        plain(&t.run_status),
        plain(&t.run_results),
        plain(&t.dead_letter),
        plain(&t.control),
        kafka::TopicSpec {
            config: vec![("cleanup.policy".into(), "compact".into())],
            ..plain(&t.runs)
        },
    ]
}

fn producer_config(settings: &Settings) -> kafka::ProducerConfig {
    let k = &settings.kafka;
    kafka::ProducerConfig {
        bootstrap: k.bootstrap_servers.clone(),
        delivery_timeout: k.delivery_timeout,
        properties: with_client_id(k),
    }
}

/// The user's librdkafka properties, plus our `client.id` unless they set one.
fn with_client_id(k: &crate::config::KafkaSettings) -> std::collections::BTreeMap<String, String> {
    let mut p = k.properties.clone();
    p.entry("client.id".into())
        .or_insert_with(|| k.client_id.clone());
    p
}

fn state_config(settings: &Settings) -> kafka::StateConfig {
    let k = &settings.kafka;
    kafka::StateConfig {
        bootstrap: k.bootstrap_servers.clone(),
        topic: k.topics.runs.clone(),
        properties: with_client_id(k),
        ..Default::default()
    }
}

fn consumer_config(settings: &Settings) -> kafka::ConsumerConfig {
    let k = &settings.kafka;
    kafka::ConsumerConfig {
        bootstrap: k.bootstrap_servers.clone(),
        group_id: k.group_id.clone(),
        topic: k.topics.launch_requests.clone(),
        max_in_flight: settings.launch.max_in_flight,
        drain_timeout: settings.shutdown.drain_timeout,
        properties: {
            let mut p = with_client_id(k);
            p.entry("session.timeout.ms".into())
                .or_insert_with(|| k.session_timeout.as_millis().to_string());
            p
        },
        ..Default::default()
    }
}
