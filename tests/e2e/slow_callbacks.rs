//! Callback bodies that hold memory: a body that stops arriving is answered 408 after
//! `callbacks.body_timeout` and gives its bytes back, and while bodies hold the instance's
//! budget (`callbacks.max_buffered_bytes`) another callback is answered 503 with
//! `Retry-After`; sent again once the budget is free, it is published once.

use crate::probe::*;
use crate::*;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BUDGET: usize = 64 * 1024;
const STALLED: usize = 48 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_gets_408_after_the_body_timeout_and_meanwhile_a_callback_past_the_budget_gets_503(
) {
    let body_timeout = Duration::from_secs(3);
    let stack = Stack::start("slowbody", &idle_sim(), |s| {
        s.callbacks.max_body_bytes = BUDGET;
        s.callbacks.max_buffered_bytes = BUDGET;
        s.callbacks.body_timeout = body_timeout;
    })
    .await;
    let run_uid = created_run(&stack, "slow-1").await;
    let token = token("slow-1");

    // A raw connection: the headers of a 60,000-byte callback, 48 KiB of it, then silence.
    let mut stalled = tokio::net::TcpStream::connect(stack.bridge.callback_addr)
        .await
        .unwrap();
    let head = format!(
        "POST /callbacks/{token} HTTP/1.1\r\nhost: bridge\r\ncontent-type: application/json\r\n\
         content-length: 60000\r\n\r\n"
    );
    stalled.write_all(head.as_bytes()).await.unwrap();
    stalled.write_all(&vec![b' '; STALLED]).await.unwrap();
    let stalled_at = Instant::now();
    let held = "captain_bridge_callback_body_bytes";
    let deadline = Instant::now() + Duration::from_secs(2);
    while metric(&stack.metrics().await, held).unwrap_or(0.0) < STALLED as f64 {
        assert!(Instant::now() < deadline, "the stalled bytes never held");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // 20 results of ~1 KiB: with the stalled bytes, past the budget.
    let body = callback_body(&run_uid, "b-1", "RUNNING", 20, 1000);
    assert!(STALLED + body.len() > BUDGET && body.len() < BUDGET);
    let url = stack.bridge.callback_url(&token);
    let http = reqwest::Client::new();
    let deferred = http
        .post(&url)
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(deferred.status(), 503);
    let retry_after = deferred.headers()["retry-after"]
        .to_str()
        .unwrap()
        .to_owned();
    let answer: Value = deferred.json().await.unwrap();
    assert_eq!(answer["error"], "unavailable", "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("callbacks.max_buffered_bytes"),
        "{answer}"
    );

    // The stalled body is answered 408 once its time is up, and its bytes are given back.
    let mut answer = Vec::new();
    let read = tokio::time::timeout(body_timeout + Duration::from_secs(10), async {
        let mut buf = [0u8; 4096];
        // Until the error code is in (or the connection closes): the answer is small.
        while !String::from_utf8_lossy(&answer).contains("body_timeout") {
            match stalled.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let answered_in = stalled_at.elapsed();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert!(read.is_ok(), "no answer to the stalled body: {answer:?}");
    assert!(
        answer.starts_with("HTTP/1.1 408"),
        "the stalled body's answer: {answer:?}"
    );
    assert!(answer.contains("body_timeout"), "{answer:?}");
    assert!(
        answered_in >= body_timeout - Duration::from_millis(100),
        "answered after {answered_in:?}, before the body timeout"
    );
    assert_eq!(metric(&stack.metrics().await, held), Some(0.0));

    // The deferred callback, delivered again, is taken and published once.
    let (code, text) = post(&http, &url, body).await;
    assert_eq!(code, 200, "{text}");
    let mut results = Collector::new(&stack.bootstrap, &stack.topics.run_results);
    results.until(Duration::from_secs(60), "the 20 results", |r| r.len() >= 20);
    results.poll_for(Duration::from_millis(500));
    let counts = result_id_counts(&results.records);
    assert_eq!(counts.len(), 20);
    assert!(counts.values().all(|&n| n == 1), "each result once");
    let metrics = stack.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "captain_bridge_callbacks_total{outcome=\"unavailable\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &metrics,
            "captain_bridge_callbacks_total{outcome=\"malformed\"}"
        ),
        Some(1.0)
    );
    eprintln!(
        "e2e slowbody: {STALLED} bytes stalled held the budget ({BUDGET}); a callback past it \
         answered 503 (Retry-After {retry_after}); the stalled body answered 408 after {:.2} s \
         (body_timeout {}s); the callback sent again published its 20 results once",
        answered_in.as_secs_f64(),
        body_timeout.as_secs()
    );
}
