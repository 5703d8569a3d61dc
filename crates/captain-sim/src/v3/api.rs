//! The `/v3` routes and the gate every `/v3` request passes: request stats, auth
//! (`Authorization: x-api-key <KEY>` + `x-project-id`), the per-key bucket (429 with or
//! without `Retry-After`), injected 5xx. The retry / cancel / webhook-retry routes have
//! configurable paths, so they are matched by one catch-all route against `[v3.paths]`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Path, RawQuery, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Extension, Router};
use rand::Rng;
use serde_json::json;
use uuid::Uuid;

use super::config::{path_segments, V3RetryAfter};
use super::jobs::{self, job_not_found, page_of};
use super::stats::add;
use super::{validate, webhooks, Caller, V3State};
use crate::error::ApiError;

/// The route label a handler reports for stats when the path was matched by hand.
#[derive(Debug, Clone)]
struct RouteLabel(String);

/// Builds the `/v3` routes, gated.
pub fn routes(v3: Arc<V3State>) -> Router {
    Router::new()
        .route("/v3/workflows", get(list_workflows))
        .route("/v3/workflows/{workflow_uid}/schedule", post(schedule))
        .route("/v3/workflows/{workflow_uid}/jobs", get(list_jobs))
        .route("/v3/jobs/{job_uid}", get(get_job))
        .route("/v3/jobs/{job_uid}/results", get(results))
        .route("/v3/jobs/{job_uid}/inputs", get(inputs))
        .route("/v3/{*rest}", any(configured))
        .route_layer(middleware::from_fn_with_state(v3.clone(), gate))
        .with_state(v3)
}

async fn gate(State(v3): State<Arc<V3State>>, mut request: Request<Body>, next: Next) -> Response {
    let method = request.method().clone();
    let matched = request
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let runtime = v3.runtime();
    let response = match authenticate(&v3, &request) {
        Err(error) => error.into_response(),
        Ok(caller) => {
            let limited = runtime.rate_limit.as_ref().and_then(|limit| {
                v3.take_token(&caller.key, limit)
                    .err()
                    .map(|w| (w, limit.retry_after))
            });
            if let Some((wait, format)) = limited {
                add(&v3.sim.stats.v3.rate_limited, 1);
                too_many_requests(wait, format).into_response()
            } else if let Some(error) = injected_error(&v3, runtime.faults.error_rate) {
                add(&v3.sim.stats.v3.injected_errors, 1);
                error.into_response()
            } else {
                request.extensions_mut().insert(caller);
                next.run(request).await
            }
        }
    };
    let route = response
        .extensions()
        .get::<RouteLabel>()
        .map(|l| l.0.clone())
        .unwrap_or(matched);
    v3.sim
        .stats
        .record_request(method.as_str(), &route, response.status().as_u16());
    response
}

fn authenticate(v3: &V3State, request: &Request<Body>) -> Result<Caller, ApiError> {
    let headers = request.headers();
    let authorization = headers
        .get("authorization")
        .ok_or_else(|| {
            ApiError::unauthorized("missing Authorization header; expected \"x-api-key <KEY>\"")
        })?
        .to_str()
        .map_err(|_| ApiError::unauthorized("invalid Authorization header"))?;
    let key = authorization
        .trim()
        .split_once(char::is_whitespace)
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("x-api-key"))
        .map(|(_, key)| key.trim())
        .filter(|key| !key.is_empty())
        .ok_or_else(|| {
            ApiError::unauthorized("Authorization header must be \"x-api-key <KEY>\"")
        })?;
    let project = v3
        .project_of(key)
        .ok_or_else(|| ApiError::unauthorized("unknown API key"))?;
    let claimed = headers
        .get("x-project-id")
        .ok_or_else(|| ApiError::unauthorized("missing x-project-id header"))?
        .to_str()
        .map_err(|_| ApiError::unauthorized("invalid x-project-id header"))?
        .trim();
    if Uuid::parse_str(claimed).ok() != Some(project.uid) {
        return Err(ApiError::unauthorized(format!(
            "x-project-id {claimed:?} is not the project of this API key"
        )));
    }
    Ok(Caller {
        key: Arc::from(key),
        project,
    })
}

fn too_many_requests(wait: Duration, format: V3RetryAfter) -> ApiError {
    let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
    let mut error = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "RATE_LIMIT_EXCEEDED",
        format!("rate limit exceeded; retry in {secs}s"),
    );
    let value = match format {
        V3RetryAfter::Seconds => Some(secs.to_string()),
        V3RetryAfter::HttpDate => Some(httpdate::fmt_http_date(
            SystemTime::now() + Duration::from_secs(secs),
        )),
        V3RetryAfter::None => None,
    };
    if let Some(v) = value.and_then(|v| HeaderValue::from_str(&v).ok()) {
        error = error.header(HeaderName::from_static("retry-after"), v);
    }
    error
}

fn injected_error(v3: &V3State, rate: f64) -> Option<ApiError> {
    if rate <= 0.0 {
        return None;
    }
    let (hit, unavailable) =
        v3.with_request_rng(|rng| (rng.random_bool(rate), rng.random_bool(0.5)));
    hit.then(|| {
        if unavailable {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "SERVICE_UNAVAILABLE",
                "the service is temporarily unavailable (injected fault)",
            )
        } else {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "INTERNAL_ERROR",
                "internal server error (injected fault)",
            )
        }
    })
}

fn uid_param(text: &str, name: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(text).map_err(|_| {
        ApiError::invalid_param(format!("{name}: {text:?} is not a valid UUID"))
            .param("field", name)
    })
}

/// `page` (from 0) and `page_size` query values, each checked.
struct Paging {
    page: u64,
    size: u64,
}

fn paging(
    raw: Option<&str>,
    default_size: u64,
    max_size: u64,
    sized: bool,
) -> Result<Paging, ApiError> {
    let query: HashMap<String, String> = form_urlencoded::parse(raw.unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let int = |key: &str, default: u64, min: u64, max: u64| match query.get(key) {
        None => Ok(default),
        Some(raw) => raw
            .parse::<u64>()
            .ok()
            .filter(|v| (min..=max).contains(v))
            .ok_or_else(|| {
                ApiError::invalid_param(format!(
                    "{key}: must be an integer between {min} and {max}, got {raw:?}"
                ))
                .param("field", key)
            }),
    };
    let page = int("page", 0, 0, 1_000_000)?;
    let size = if sized {
        int("page_size", default_size, 1, max_size)?
    } else {
        default_size
    };
    Ok(Paging { page, size })
}

fn ok_json(value: impl serde::Serialize) -> Response {
    (StatusCode::OK, axum::Json(value)).into_response()
}

async fn list_workflows(
    State(v3): State<Arc<V3State>>,
    Extension(caller): Extension<Caller>,
) -> Response {
    let views: Vec<_> = v3
        .workflows()
        .iter()
        .filter(|w| w.visible_to(&caller.project))
        .map(|w| w.view(&caller.project))
        .collect();
    ok_json(views)
}

fn workflow_of(v3: &V3State, caller: &Caller, raw: &str) -> Result<Arc<super::Workflow>, ApiError> {
    let uid = uid_param(raw, "workflow_uid")?;
    v3.workflow(uid)
        .filter(|w| w.visible_to(&caller.project))
        .cloned()
        .ok_or_else(|| {
            ApiError::not_found(
                "WORKFLOW_404_NOT_FOUND",
                format!("workflow {uid} not found"),
            )
            .param("workflow_uid", uid.to_string())
        })
}

async fn schedule(
    State(v3): State<Arc<V3State>>,
    Extension(caller): Extension<Caller>,
    Path(workflow_uid): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let workflow = workflow_of(&v3, &caller, &workflow_uid)?;
    let request = validate::launch_request(&body, &workflow, &v3.runtime().behaviour)?;
    let view = workflow.view(&caller.project);
    let job_uid = jobs::create(&v3, caller.project, workflow, request);
    Ok(ok_json(json!({
        "workflow": view,
        "message": "Bot successfully scheduled.",
        "job_uid": job_uid,
    })))
}

async fn list_jobs(
    State(v3): State<Arc<V3State>>,
    Extension(caller): Extension<Caller>,
    Path(workflow_uid): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let workflow = workflow_of(&v3, &caller, &workflow_uid)?;
    let runtime = v3.runtime();
    let paging = paging(query.as_deref(), runtime.results.jobs_page_size, 0, false)?;
    // Jobs of the last two months (support article 6067606082461), newest first.
    let since = v3.sim.clock.now() - chrono::Duration::days(60);
    let success = runtime.behaviour.success_status;
    let views: Vec<_> = {
        let store = v3.jobs();
        let mut mine: Vec<_> = store
            .in_order()
            .filter(|j| {
                j.project.uid == caller.project.uid
                    && j.workflow.uid == workflow.uid
                    && j.created_at >= since
            })
            .collect();
        mine.reverse();
        page_of(&mine, paging.page, paging.size)
            .into_iter()
            .map(|j| j.view(success))
            .collect()
    };
    Ok(ok_json(views))
}

async fn get_job(
    State(v3): State<Arc<V3State>>,
    Extension(caller): Extension<Caller>,
    Path(job_uid): Path<String>,
) -> Result<Response, ApiError> {
    let uid = uid_param(&job_uid, "job_uid")?;
    let success = v3.runtime().behaviour.success_status;
    let store = v3.jobs();
    let job = store
        .get(uid, &caller.project)
        .ok_or_else(|| job_not_found(uid))?;
    Ok(ok_json(job.view(success)))
}

async fn results(
    State(v3): State<Arc<V3State>>,
    Extension(caller): Extension<Caller>,
    Path(job_uid): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let uid = uid_param(&job_uid, "job_uid")?;
    let r = v3.runtime().results.clone();
    let paging = paging(query.as_deref(), r.page_size, r.max_page_size, true)?;
    let rows: Vec<serde_json::Value> = {
        let store = v3.jobs();
        let job = store
            .get(uid, &caller.project)
            .ok_or_else(|| job_not_found(uid))?;
        page_of(&job.results, paging.page, paging.size)
            .into_iter()
            .map(|row| row.value)
            .collect()
    };
    let stats = &v3.sim.stats.v3;
    add(&stats.results_served, rows.len() as u64);
    add(&stats.result_pages_served, 1);
    Ok(ok_json(json!({ "results": rows })))
}

async fn inputs(
    State(v3): State<Arc<V3State>>,
    Extension(caller): Extension<Caller>,
    Path(job_uid): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let uid = uid_param(&job_uid, "job_uid")?;
    let r = v3.runtime().results.clone();
    let paging = paging(query.as_deref(), r.page_size, r.max_page_size, true)?;
    let store = v3.jobs();
    let job = store
        .get(uid, &caller.project)
        .ok_or_else(|| job_not_found(uid))?;
    let all: Vec<serde_json::Value> = job
        .inputs
        .iter()
        .zip(&job.input_states)
        .map(|(input, state)| {
            json!({
                "input": input,
                "status": state.status,
                "error": state.error,
                "results_count": state.results.len(),
            })
        })
        .collect();
    Ok(ok_json(
        json!({ "inputs": page_of(&all, paging.page, paging.size) }),
    ))
}

/// Which configured route a path names.
#[derive(Debug, Clone, Copy)]
enum Configured {
    RetryJob,
    CancelJob,
    RetryWebhook,
}

/// Matches `/v3/<rest>` against the `[v3.paths]` templates; the job uid text and the route.
fn match_configured(v3: &V3State, rest: &str) -> Option<(Configured, String, String)> {
    let path = format!("/{rest}");
    let given: Vec<&str> = path[1..].split('/').collect();
    for (route, template) in [
        (Configured::RetryJob, &v3.paths.retry_job),
        (Configured::CancelJob, &v3.paths.cancel_job),
        (Configured::RetryWebhook, &v3.paths.retry_webhook),
    ] {
        let Ok(segments) = path_segments(template) else {
            continue;
        };
        if segments.len() != given.len() {
            continue;
        }
        let mut job = None;
        let fits = segments.iter().zip(&given).all(|(t, g)| {
            if *t == "{job_uid}" {
                job = Some((*g).to_owned());
                !g.is_empty()
            } else {
                t == g
            }
        });
        if let (true, Some(job)) = (fits, job) {
            return Some((route, job, format!("/v3{template}")));
        }
    }
    None
}

/// The retry / cancel / webhook-retry routes, and the v3 404.
async fn configured(
    State(v3): State<Arc<V3State>>,
    Extension(caller): Extension<Caller>,
    method: Method,
    Path(rest): Path<String>,
    body: Bytes,
) -> Response {
    let Some((route, job_text, label)) = match_configured(&v3, &rest) else {
        return ApiError::not_found(
            "ROUTE_404_NOT_FOUND",
            format!("no route for {method} /v3/{rest}"),
        )
        .into_response();
    };
    let mut response = if method != Method::POST {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "METHOD_NOT_ALLOWED",
            format!("{label} accepts POST only"),
        )
        .into_response()
    } else {
        match run_configured(&v3, &caller, route, &job_text, &body) {
            Ok(response) => response,
            Err(error) => error.into_response(),
        }
    };
    response.extensions_mut().insert(RouteLabel(label));
    response
}

fn run_configured(
    v3: &Arc<V3State>,
    caller: &Caller,
    route: Configured,
    job_text: &str,
    body: &[u8],
) -> Result<Response, ApiError> {
    let uid = uid_param(job_text, "job_uid")?;
    match route {
        Configured::RetryJob => {
            // The FAQ says a retry takes the launch payload; the simulator accepts an empty
            // body, `{}`, or a JSON object, and re-runs the job as it was launched.
            any_object_body(body)?;
            let job = jobs::retry(v3, &caller.project, uid)?;
            Ok(ok_json(json!({
                "message": "Job successfully retried.",
                "job_uid": uid,
                "status": job.status,
            })))
        }
        Configured::CancelJob => {
            any_object_body(body)?;
            let job = jobs::cancel(v3, &caller.project, uid)?;
            Ok(ok_json(json!({
                "message": "Job successfully cancelled.",
                "job_uid": uid,
                "status": job.status,
            })))
        }
        Configured::RetryWebhook => {
            any_object_body(body)?;
            let webhook_uid = webhooks::retry(v3, &caller.project, uid)?;
            Ok(ok_json(json!({
                "message": "Webhook successfully retried.",
                "job_uid": uid,
                "webhook_uid": webhook_uid,
            })))
        }
    }
}

fn any_object_body(body: &[u8]) -> Result<(), ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(serde_json::Value::Object(_)) => Ok(()),
        Ok(_) => Err(ApiError::invalid_input("body: must be a JSON object").param("field", "body")),
        Err(e) => {
            Err(ApiError::invalid_input(format!("body: invalid JSON: {e}")).param("field", "body"))
        }
    }
}
