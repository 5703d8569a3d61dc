//! Building the v3 parts from the settings: the v3 client behind the v3 key's own rate
//! limiter, the owner's [`V3Jobs`], and the webhook endpoint's state. Kept here so the
//! application wires v3 in with a few lines.

use super::metrics::V3Metrics;
use super::webhook::{webhook_router, WebhookState};
use crate::callbacks::body::{BodyBudget, BodyLimits};
use crate::captain::v3::{V3Client, V3ClientConfig};
use crate::captain::{AdaptiveLimiter, RetryPolicy};
use crate::config::Settings;
use crate::intake::CallbackIntake;
use crate::metrics::Metrics;
use crate::owner::v3_jobs::V3Jobs;
use crate::token::TokenKeys;
use anyhow::Context;
use axum::http::HeaderName;
use axum::Router;
use std::sync::Arc;

/// The owner's v3 jobs and the v3 metrics, or `None` when `v3.enabled` is off.
pub fn build(
    settings: &Settings,
    metrics: &Metrics,
) -> anyhow::Result<Option<(Arc<V3Jobs>, V3Metrics)>> {
    let v3 = &settings.v3;
    if !v3.enabled {
        return Ok(None);
    }
    let api_key = v3
        .secrets
        .api_key
        .clone()
        .context("v3.api_key: no v3 API key")?;
    let c = &settings.captain;
    let mut config = V3ClientConfig::new(v3.base_url.clone(), api_key, v3.project_uid.clone());
    config.request_timeout = v3.request_timeout;
    config.retry = RetryPolicy {
        max_attempts: c.max_attempts,
        initial_backoff: c.initial_backoff,
        max_backoff: c.max_backoff,
        max_rate_limit_wait: c.max_rate_limit_wait,
    };
    config.results_page_size = Some(v3.results_page_size);
    config.max_result_pages = v3.max_result_pages;
    config.default_rate_limit_wait = v3.rate_limit.default_cooldown;
    // The v3 key is its own key: its own limiter, its own cooldowns, its own `key` label.
    let limiter = Arc::new(
        AdaptiveLimiter::new(v3.rate_limit.clone(), metrics.clone())
            .map_err(|e| anyhow::anyhow!("v3.rate_limit.{}: {}", e.field, e.reason))?,
    );
    let client = V3Client::new(config, metrics.clone())
        .map_err(|e| anyhow::anyhow!("v3: {e}"))?
        .with_gate(limiter);
    let v3_metrics = V3Metrics::new(metrics).context("registering the v3 metrics")?;
    Ok(Some((
        Arc::new(V3Jobs {
            client,
            max_inputs: v3.max_inputs,
            max_job_name_len: v3.max_job_name_len,
            metrics: v3_metrics.clone(),
        }),
        v3_metrics,
    )))
}

/// The webhook endpoint's state: the same token keys as callbacks (they verify the job
/// name's token), the same durable intake and the same budget of body bytes in memory.
pub fn webhook_state(
    settings: &Settings,
    keys: Arc<TokenKeys>,
    intake: CallbackIntake,
    budget: BodyBudget,
    metrics: V3Metrics,
) -> anyhow::Result<WebhookState> {
    let v3 = &settings.v3;
    let header_name = HeaderName::try_from(v3.webhook_header_name.as_str())
        .map_err(|e| anyhow::anyhow!("v3.webhook_header_name: {e}"))?;
    Ok(WebhookState {
        keys,
        sink: Arc::new(intake),
        header_name,
        secrets: v3.secrets.webhook_secrets.clone().into(),
        project_uid: v3.project_uid.as_str().into(),
        body: BodyLimits {
            max_bytes: v3.max_webhook_bytes,
            timeout: settings.callbacks.body_timeout,
            budget,
        },
        retry_after: settings.callbacks.retry_after,
        metrics,
    })
}

/// The callback router with `POST /webhooks/v3` merged in when v3 is enabled.
pub fn with_webhooks(callbacks: Router, webhooks: Option<WebhookState>) -> Router {
    match webhooks {
        Some(state) => callbacks.merge(webhook_router(state)),
        None => callbacks,
    }
}
