//! Wiring: builds every part from the settings, binds the listeners (so callers learn the real
//! ports), runs the launch router, the partition owner, the callback server (unless
//! `callbacks.enabled` is false: a live-only bridge) and the ops server until the shutdown
//! token is cancelled or one of them fails, then stops them in order: stop consuming (the
//! owner drains its submissions in flight within the deadline and commits), stop accepting
//! callbacks, flush the producer.

use crate::avro::{Codec, RecordEncoder};
use crate::callbacks::body::{BodyBudget, BodyLimits};
use crate::callbacks::{self, CallbackState, Readiness};
use crate::captain::{AdaptiveLimiter, CaptainClient, ClientConfig, RateMode, RetryPolicy};
use crate::config::{Settings, RECORD_HEADROOM};
use crate::domain::Admission;
use crate::intake::CallbackIntake;
use crate::kafka::{self, ClusterAccess, PauseControl, ProducerConfig, RecordProducer};
use crate::metrics::Metrics;
use crate::owner::jobs::{SubmitSettings, Submitter};
use crate::owner::live::LiveRunner;
use crate::owner::reconcile::{CallbacksWatermarks, Reconciler};
use crate::owner::{OwnerConfig, PartitionOwner, ReconcileConfig};
use crate::publish::RecordBuilder;
use crate::router::{LaunchRouter, RouterConfig};
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
    /// `None` without a callback listener (`callbacks.enabled = false`).
    callback_listener: Option<TcpListener>,
    ops_listener: TcpListener,
    producer: Arc<RecordProducer>,
    router: LaunchRouter,
    owner: PartitionOwner,
    pause: Arc<PauseControl>,
    callback_state: Option<CallbackState>,
    limiter: Arc<AdaptiveLimiter>,
    /// `POST /webhooks/v3`, when v3 is enabled.
    webhooks: Option<crate::workflows::WebhookState>,
    /// Output values' encoder: asks the registry until every Avro writer id is known.
    encoder: Arc<RecordEncoder>,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let metrics = Metrics::new().context("registering metrics")?;
        let readiness = Readiness::new();
        let callbacks_on = settings.callbacks.enabled;
        let keys = match callbacks_on {
            true => Some(Arc::new(token_keys(&settings)?)),
            false => None,
        };
        let header_secret = header_secret(&settings)?;

        let callback_listener = match callbacks_on {
            true => Some(
                TcpListener::bind(settings.callbacks.listen)
                    .await
                    .with_context(|| {
                        format!(
                            "callbacks.listen: cannot bind {}",
                            settings.callbacks.listen
                        )
                    })?,
            ),
            false => None,
        };
        let ops_listener = TcpListener::bind(settings.ops.listen)
            .await
            .with_context(|| format!("ops.listen: cannot bind {}", settings.ops.listen))?;

        let access = cluster_access(&settings);
        let k = &settings.kafka;
        if k.create_topics {
            kafka::ensure_topics(&access, &topic_specs(&settings), Duration::from_secs(30))
                .await
                .context("creating topics")?;
        }
        let partitions = co_partitioned(&settings, &access).await?;
        let dead_letter_max = topic_limit(&access, &k.topics.dead_letter).await;
        let codec = Codec::start(&settings, &metrics)
            .await
            .context("setting up the Avro codec")?;
        let mut records = RecordBuilder::new(k.topics.clone(), partitions)
            .with_dead_letter_limit(dead_letter_max);
        if codec.encoder.any_avro() {
            records = records.with_encoder(codec.encoder.clone());
        }
        let producer_config = producer_config(&settings);
        let producer = Arc::new(
            RecordProducer::new(&producer_config, metrics.clone())
                .context("creating the Kafka producer")?,
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
        let live = Arc::new(LiveRunner::new(
            client.clone(),
            settings.live.concurrency,
            settings.live.max_calls_in_flight,
            metrics.clone(),
        ));
        let callback_base = match &callback_listener {
            Some(listener) => public_base_url(&settings, listener.local_addr()?),
            None => String::new(),
        };
        // Control commands use the reconciler's API calls even when reconciling is off.
        let reconciler = Arc::new(Reconciler::new(
            client.clone(),
            limiter.clone(),
            settings.reconcile.max_rate_share,
            Some(Arc::new(callbacks_watermarks(&settings)?)),
        ));
        let v3 = crate::workflows::wiring::build(&settings, &metrics)?;
        let submitter = Arc::new(Submitter {
            client,
            keys: keys.clone(),
            live,
            settings: SubmitSettings {
                public_base_url: callback_base,
                header_secret: header_secret
                    .as_ref()
                    .map(|(name, secret)| (name.to_string(), secret.clone())),
                async_max_inputs: settings.captain.async_max_inputs,
                schedule_max_inputs: settings.captain.schedule_max_inputs,
                token_ttl: settings.callbacks.token_ttl,
            },
            v3: v3.as_ref().map(|(jobs, _)| jobs.clone()),
        });
        // The transactional ids' suffix: stable if configured, so that a restarted instance
        // fences its predecessor's open transaction at start-up.
        let instance = k
            .instance_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
        let router = LaunchRouter::new(
            RouterConfig {
                bootstrap: k.bootstrap_servers.clone(),
                group_id: k.group_id.clone(),
                launch_topic: k.topics.launch_requests.clone(),
                control_topic: k.topics.control.clone(),
                commit_interval: settings.processing.commit_interval,
                max_request_bytes: k.max_record_bytes,
                admission: Admission {
                    callbacks: callbacks_on,
                    live_max_inputs: settings.live.max_inputs,
                    auto_max_inputs: settings.live.auto_max_inputs,
                },
                producer: producer_config.clone(),
                transactional_id: format!("{}-router-{instance}", k.group_id),
                transaction_timeout: k.transaction_timeout,
                consumer_properties: consumer_properties(&settings),
            },
            records.clone(),
            codec.decoder.clone(),
            metrics.clone(),
        )
        .context("creating the launch router")?;
        let pause = Arc::new(PauseControl::default());
        let owner = PartitionOwner::new(
            OwnerConfig {
                bootstrap: k.bootstrap_servers.clone(),
                group_id: owner_group(&settings),
                requests_topic: k.topics.requests.clone(),
                callbacks_topic: k.topics.callbacks.clone(),
                runs_topic: k.topics.runs.clone(),
                commit_interval: settings.processing.commit_interval,
                max_in_flight: settings.launch.max_in_flight,
                dedupe_window: settings.callbacks.dedupe_window,
                revoke_drain: settings.processing.revoke_drain,
                drain_timeout: settings.shutdown.drain_timeout,
                restore_timeout: settings.processing.restore_timeout,
                transaction_timeout: k.transaction_timeout,
                producer: producer_config,
                consumer_properties: consumer_properties(&settings),
                transactional_id: format!("{}-owner-{instance}", k.group_id),
            },
            records.clone(),
            submitter,
            producer.clone(),
            pause.clone(),
            metrics.clone(),
        )
        .context("creating the partition owner")?;
        let reconcile = match settings.reconcile.enabled {
            true => Some(reconcile_config(&settings.reconcile)?),
            false => None,
        };
        let owner = owner.with_reconciler(reconcile, reconciler);
        // One budget of body bytes in memory for both endpoints.
        let body_budget = BodyBudget::new(settings.callbacks.max_buffered_bytes)
            .with_gauge(metrics.callback_body_bytes.clone());
        let webhooks = match (v3, &keys) {
            (Some((_, metrics)), Some(keys)) => Some(crate::workflows::wiring::webhook_state(
                &settings,
                keys.clone(),
                CallbackIntake {
                    records: records.clone(),
                    producer: producer.clone(),
                    ack_timeout: settings.callbacks.ack_timeout,
                    retry_after: settings.callbacks.retry_after,
                },
                body_budget.clone(),
                metrics,
            )?),
            (Some(_), None) => anyhow::bail!(
                "v3.enabled: workflow webhooks are served on the callback listener; \
                 set callbacks.enabled = true"
            ),
            (None, _) => None,
        };
        let callback_state = keys.map(|keys| CallbackState {
            keys,
            sink: Arc::new(CallbackIntake {
                records,
                producer: producer.clone(),
                ack_timeout: settings.callbacks.ack_timeout,
                retry_after: settings.callbacks.retry_after,
            }),
            body: BodyLimits {
                max_bytes: settings.callbacks.max_body_bytes,
                timeout: settings.callbacks.body_timeout,
                budget: body_budget,
            },
            retry_after: settings.callbacks.retry_after,
            max_results: settings.callbacks.max_results,
            header_secret,
            metrics: metrics.clone(),
        });
        if settings.callbacks.submit_wait.is_some() {
            tracing::warn!("callbacks.submit_wait is ignored: callbacks now wait in their partition's owner for the submission answer");
        }
        Ok(Self {
            settings,
            metrics,
            readiness,
            callback_listener,
            ops_listener,
            producer,
            router,
            owner,
            pause,
            callback_state,
            limiter,
            webhooks,
            encoder: codec.encoder,
        })
    }

    /// The bound callback address (useful with port 0); `None` without a callback listener.
    pub fn callback_addr(&self) -> std::io::Result<Option<SocketAddr>> {
        self.callback_listener
            .as_ref()
            .map(TcpListener::local_addr)
            .transpose()
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
            router,
            owner,
            pause,
            callback_state,
            limiter,
            webhooks,
            encoder,
        } = self;

        let ops_stop = CancellationToken::new();
        let ops = tokio::spawn(callbacks::serve(
            ops_listener,
            callbacks::ops_router(metrics.clone(), readiness.clone()),
            ops_stop.clone().cancelled_owned(),
        ));
        let callbacks_stop = CancellationToken::new();
        let mut callback_server = match (callback_listener, callback_state) {
            (Some(listener), Some(state)) => tokio::spawn(callbacks::serve(
                listener,
                crate::workflows::wiring::with_webhooks(
                    callbacks::callback_router(state),
                    webhooks,
                ),
                callbacks_stop.clone().cancelled_owned(),
            )),
            // A live-only bridge: a server that stops when told, serving nothing meanwhile.
            _ => tokio::spawn({
                let stop = callbacks_stop.clone();
                async move {
                    stop.cancelled().await;
                    Ok::<(), std::io::Error>(())
                }
            }),
        };
        let consume_stop = CancellationToken::new();
        tokio::spawn(pause_during_cooldowns(
            limiter,
            metrics.launch_paused_for_cooldown.clone(),
            pause,
            settings.captain.rate_limit.pause_consumer_after,
            consume_stop.clone(),
        ));
        let warm_stop = consume_stop.clone();
        tokio::spawn(async move { encoder.keep_warm(warm_stop).await });
        let mut routing = tokio::spawn(router.run(consume_stop.clone()));
        let mut owning = tokio::spawn(owner.run(consume_stop.clone()));
        readiness.set_ready(true);
        tracing::info!(
            callbacks = %if settings.callbacks.enabled { settings.callbacks.listen.to_string() } else { "off".into() },
            ops = %settings.ops.listen,
            topic = %settings.kafka.topics.launch_requests,
            "captain-bridge running"
        );

        // Any part that ends on its own ends the process: a bridge that consumes but cannot
        // take callbacks (or the reverse) would silently lose work.
        let mut failure: Option<anyhow::Error> = None;
        tokio::select! {
            () = stop.cancelled() => {}
            r = &mut routing => failure = Some(ended("launch router", r.map(|r| r.map_err(anyhow::Error::from)))),
            r = &mut owning => failure = Some(ended("partition owner", r.map(|r| r.map_err(anyhow::Error::from)))),
            r = &mut callback_server => failure = Some(ended("callback server", r.map(|r| r.map_err(anyhow::Error::from)))),
        }
        readiness.set_ready(false);
        tracing::info!("shutting down: stop consuming, drain submissions in flight, commit");
        consume_stop.cancel();
        // The owner waits up to drain_timeout for its submissions, then commits and leaves.
        let deadline = settings.shutdown.drain_timeout + Duration::from_secs(15);
        let owner_done = tokio::time::timeout(deadline, &mut owning)
            .await
            .map(|r| r.map(|r| r.map_err(anyhow::Error::from)));
        let router_done = tokio::time::timeout(deadline, &mut routing)
            .await
            .map(|r| r.map(|r| r.map_err(anyhow::Error::from)));
        for (what, done) in [
            ("partition owner", owner_done),
            ("launch router", router_done),
        ] {
            match done {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => {
                    tracing::error!(error = format!("{e:#}"), what, "ended with an error")
                }
                Ok(Err(e)) => tracing::error!(error = %e, what, "task failed"),
                Err(_) => tracing::error!(what, "did not stop in time"),
            }
        }

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
/// requests stay in Kafka instead of piling up in memory as waiting submissions, and the
/// consumer keeps polling so it stays in its group however long the cooldown.
async fn pause_during_cooldowns(
    limiter: Arc<AdaptiveLimiter>,
    paused_gauge: prometheus::IntGauge,
    pause: Arc<PauseControl>,
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

/// The owners' consumer group: its own, beside the launch topic's (`kafka.group_id`).
pub fn owner_group(settings: &Settings) -> String {
    format!("{}-owners", settings.kafka.group_id)
}

/// The topics the bridge creates (when `kafka.create_topics`) and checks at start-up. The
/// internal ones (requests, callbacks, run state) take records up to `kafka.max_record_bytes`.
pub fn topic_specs(settings: &Settings) -> Vec<kafka::TopicSpec> {
    let k = &settings.kafka;
    let t = &k.topics;
    let plain = |name: &str| kafka::TopicSpec {
        name: name.to_owned(),
        partitions: k.partitions,
        replication: k.replication_factor,
        config: Vec::new(),
    };
    let internal = |name: &str, extra: &[(&str, &str)]| {
        let mut config = vec![(
            "max.message.bytes".to_owned(),
            k.max_record_bytes.to_string(),
        )];
        config.extend(
            extra
                .iter()
                .map(|(a, b)| ((*a).to_owned(), (*b).to_owned())),
        );
        kafka::TopicSpec {
            config,
            ..plain(name)
        }
    };
    vec![
        plain(&t.launch_requests),
        plain(&t.run_status),
        plain(&t.run_results),
        plain(&t.dead_letter),
        plain(&t.control),
        internal(&t.runs, &[("cleanup.policy", "compact")]),
        internal(&t.callbacks, &[]),
        internal(&t.requests, &[]),
    ]
}

/// The partition count the internal topics share; refuses to start when they differ, since
/// an owner could then not find a request's state where its events are.
async fn co_partitioned(settings: &Settings, access: &ClusterAccess) -> anyhow::Result<i32> {
    let t = &settings.kafka.topics;
    let mut counts = Vec::new();
    for (key, topic) in [
        ("kafka.topics.runs", &t.runs),
        ("kafka.topics.callbacks", &t.callbacks),
        ("kafka.topics.requests", &t.requests),
    ] {
        let n = kafka::partition_count(access, topic, Duration::from_secs(30))
            .await
            .with_context(|| format!("{key}: topic {topic} is not readable"))?;
        counts.push((key, topic.clone(), n));
    }
    let first = counts[0].2;
    if let Some((key, topic, n)) = counts.iter().find(|(_, _, n)| *n != first) {
        anyhow::bail!(
            "{key}: topic {topic} has {n} partitions but {} has {first}: the run-state, callbacks \
             and requests topics must have the same partition count (they are co-partitioned by \
             request_id)",
            counts[0].1
        );
    }
    Ok(first)
}

/// A topic's `max.message.bytes`, or Kafka's default when it cannot be read (a cluster
/// without the admin API, such as the demo's embedded one, answers nothing: hence the short
/// bound).
async fn topic_limit(access: &ClusterAccess, topic: &str) -> usize {
    let asked =
        kafka::admin::topic_config(access, topic, "max.message.bytes", Duration::from_secs(5));
    match tokio::time::timeout(Duration::from_secs(5), asked)
        .await
        .unwrap_or_else(|_| Err(kafka::AdminError::UnknownTopic(topic.to_owned())))
    {
        Ok(Some(v)) => v.parse().unwrap_or(1_048_588),
        Ok(None) => 1_048_588,
        Err(e) => {
            tracing::warn!(topic, error = %ErrorChain(&e), "cannot read max.message.bytes; assuming Kafka's default");
            1_048_588
        }
    }
}

fn cluster_access(settings: &Settings) -> ClusterAccess {
    ClusterAccess {
        bootstrap: settings.kafka.bootstrap_servers.clone(),
        properties: with_client_id(&settings.kafka),
    }
}

fn producer_config(settings: &Settings) -> ProducerConfig {
    let k = &settings.kafka;
    ProducerConfig {
        bootstrap: k.bootstrap_servers.clone(),
        delivery_timeout: k.delivery_timeout,
        max_record_bytes: k
            .max_record_bytes
            .max(settings.callbacks.max_body_bytes + RECORD_HEADROOM),
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

/// The consumers' properties: the user's, and the group session timeout unless they set one.
fn consumer_properties(settings: &Settings) -> std::collections::BTreeMap<String, String> {
    let k = &settings.kafka;
    let mut p = with_client_id(k);
    p.entry("session.timeout.ms".into())
        .or_insert_with(|| k.session_timeout.as_millis().to_string());
    // librdkafka's statistics feed the consumer-lag metric (see kafka::stats).
    p.entry("statistics.interval.ms".into())
        .or_insert_with(|| k.statistics_interval.as_millis().to_string());
    p
}

/// A group-less consumer that only reads the callbacks topic's high watermarks (see
/// `owner::reconcile::CallbacksWatermarks`).
fn callbacks_watermarks(settings: &Settings) -> anyhow::Result<CallbacksWatermarks> {
    let mut cc = rdkafka::ClientConfig::new();
    cc.set("bootstrap.servers", &settings.kafka.bootstrap_servers);
    for (k, v) in with_client_id(&settings.kafka) {
        cc.set(k, v);
    }
    let consumer = cc
        .create()
        .context("creating the callbacks watermark reader")?;
    Ok(CallbacksWatermarks {
        consumer,
        topic: settings.kafka.topics.callbacks.clone(),
    })
}

/// The reconciler's settings as the owner uses them.
fn reconcile_config(r: &crate::config::ReconcileSettings) -> anyhow::Result<ReconcileConfig> {
    let d = |key: &str, v: Duration| {
        chrono::Duration::from_std(v).with_context(|| format!("reconcile.{key}: out of range"))
    };
    Ok(ReconcileConfig {
        timers: crate::domain::reconcile::ReconcileTimers {
            silence_after: d("silence_after", r.silence_after)?,
            run_deadline: d("run_deadline", r.run_deadline)?,
            audit_delay: d("audit_delay", r.audit_delay)?,
            audit_retry: d("audit_retry", r.audit_retry)?,
            audit_timeout: d("audit_timeout", r.audit_timeout)?,
        },
        max_replays: r.max_replays,
        max_in_flight: r.max_in_flight,
        schedule_interval: d("schedule_interval", r.schedule_interval)?,
        tick: r.tick,
    })
}
