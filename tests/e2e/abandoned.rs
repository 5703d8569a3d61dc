//! Defect 5: a client that gives up in the middle. A 1 M-result callback abandoned after 3 s
//! used to leave 820,986 records published, and its redelivery published them all again. Now a
//! callback is one durable record, appended whole or not at all, and its results are published
//! by the request's owner once per batch: a client abandoning a large callback mid-upload or
//! mid-ack, then delivering it again (twice), leaves each result exactly once for
//! `read_committed` consumers.

use crate::probe::*;
use crate::*;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

fn request_head(bridge: &BridgeProcess, path_token: &str, length: usize) -> Vec<u8> {
    format!(
        "POST /callbacks/{path_token} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\n\
         content-length: {length}\r\n\r\n",
        bridge.callback_addr
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_callback_abandoned_mid_upload_and_mid_ack_then_redelivered_is_published_once() {
    let stack = Stack::start("abandon", &idle_sim(), |_| {}).await;
    let limit = stack.bridge.settings().callbacks.max_results;
    let run_uid = created_run(&stack, "abandon-1").await;
    let token = token("abandon-1");
    let body = callback_body(&run_uid, "b-big", "RUNNING", limit, 700);
    let head = request_head(&stack.bridge, &token, body.len());

    // Mid-upload: the headers and half the body, then the connection goes.
    let mut socket = TcpStream::connect(stack.bridge.callback_addr)
        .await
        .unwrap();
    socket.write_all(&head).await.unwrap();
    socket.write_all(&body[..body.len() / 2]).await.unwrap();
    drop(socket);

    // Mid-ack: the whole request, then the connection goes before the answer.
    let mut socket = TcpStream::connect(stack.bridge.callback_addr)
        .await
        .unwrap();
    socket.write_all(&head).await.unwrap();
    socket.write_all(&body).await.unwrap();
    socket.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    drop(socket);

    // The platform delivers it again, twice (a retry of an answer it did not see, then a
    // replay), and both are acknowledged.
    let http = reqwest::Client::new();
    let url = stack.bridge.callback_url(&token);
    let started = Instant::now();
    for attempt in 0..2 {
        let (code, text) = post(&http, &url, body.clone()).await;
        assert_eq!(code, 200, "redelivery {attempt}: {text}");
    }
    let mut status = Collector::new(&stack.bootstrap, &stack.topics.run_status);
    let mut results = Collector::new(&stack.bootstrap, &stack.topics.run_results);
    results.until(Duration::from_secs(60), "every result", |r| {
        r.len() >= limit
    });
    status.until(Duration::from_secs(20), "RUNNING", |r| {
        final_status_count(r, "RUNNING") >= 1
    });
    let published_in = started.elapsed();
    // Copies of a second publication would follow the first: read on a while.
    results.poll_for(Duration::from_secs(2));
    status.poll_for(Duration::from_millis(300));
    let mut intake = Collector::new(&stack.bootstrap, &stack.topics.callbacks);
    intake.poll_for(Duration::from_secs(1));

    let ledger = Ledger::read(&status.records, &results.records);
    eprintln!(
        "e2e abandoned: {limit} results ({:.1} MiB) abandoned mid-upload and mid-ack, delivered \
         twice more: {} copies of the callback durable in the intake log, published in {:.2} \
         s; {}",
        body.len() as f64 / 1048576.0,
        intake.records.len(),
        published_in.as_secs_f64(),
        ledger.summary()
    );
    assert_eq!(ledger.results.len(), limit, "every result");
    assert_eq!(ledger.duplicate_results(), 0, "no result published twice");
    assert_eq!(ledger.repeated_statuses(), 0, "no status published twice");
    assert!(
        (2..=3).contains(&intake.records.len()),
        "the half upload is never appended; the abandoned full one may be: {}",
        intake.records.len()
    );
}
