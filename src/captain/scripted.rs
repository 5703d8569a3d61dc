//! A scripted HTTP server for the client's tests: answers a list of canned responses in order
//! (the last one forever) and records every request with the tokio instant it arrived.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap as AxumHeaders, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::Value;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use tokio::time::Instant as TokioInstant;

/// One scripted answer of the test server.
#[derive(Clone)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(&'static str, String)>,
    pub(crate) body: String,
}

pub(crate) fn answer(status: u16, body: Value) -> Answer {
    Answer {
        status,
        headers: vec![("content-type", "application/json".into())],
        body: body.to_string(),
    }
}

pub(crate) fn answer_with(status: u16, header: &'static str, value: String) -> Answer {
    Answer {
        status,
        headers: vec![(header, value)],
        body: String::new(),
    }
}

/// A request the test server received, and when (on tokio's clock).
pub(crate) struct Seen {
    pub(crate) method: String,
    pub(crate) uri: String,
    pub(crate) headers: AxumHeaders,
    pub(crate) body: Vec<u8>,
    pub(crate) at: TokioInstant,
}

#[derive(Default)]
pub(crate) struct Script {
    pub(crate) answers: Mutex<VecDeque<Answer>>,
    pub(crate) seen: Mutex<Vec<Seen>>,
}

impl Script {
    pub(crate) fn seen_count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

async fn scripted(State(script): State<Arc<Script>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    script.seen.lock().unwrap().push(Seen {
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        headers: parts.headers,
        body: body.to_vec(),
        at: TokioInstant::now(),
    });
    // The last answer repeats forever.
    let answer = {
        let mut answers = script.answers.lock().unwrap();
        if answers.len() > 1 {
            answers.pop_front()
        } else {
            answers.front().cloned()
        }
    }
    .unwrap();
    let mut response = Response::new(Body::from(answer.body));
    *response.status_mut() = StatusCode::from_u16(answer.status).unwrap();
    for (name, value) in answer.headers {
        response.headers_mut().insert(name, value.parse().unwrap());
    }
    response.into_response()
}

/// Starts a server answering `answers` in order; returns its base URL and what it saw.
pub(crate) async fn serve(answers: Vec<Answer>) -> (String, Arc<Script>) {
    let script = Arc::new(Script {
        answers: Mutex::new(answers.into()),
        seen: Mutex::default(),
    });
    let app = Router::new().fallback(scripted).with_state(script.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/v4"), script)
}
