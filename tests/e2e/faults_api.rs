//! Faults between the bridge and the API, injected by a real Toxiproxy on both paths: the
//! bridge's calls to captain-sim (`captain.base_url` through one proxy) and captain-sim's
//! callbacks to the bridge (`callbacks.public_base_url` through another). Latency and cuts, each
//! added in the middle of a stream. After each, a `read_committed` ledger: every request
//! SUCCEEDED with every result (nothing lost); result and status duplicates counted (none);
//! requests submitted twice counted: a call cut after the API took it is retried and makes a
//! second run (the API has no idempotency key: the window the README states).

use crate::crash::replay_failed_callbacks;
use crate::probe::*;
use crate::*;
use captain_testkit::toxiproxy::{Proxy, Toxic, Toxiproxy};
use std::time::{Duration, Instant};

const WAVE: usize = 20;
const RESULTS: usize = 2;

async fn wave(stack: &Stack, phase: &str) -> Vec<String> {
    let ids: Vec<String> = (0..WAVE).map(|i| format!("{phase}-{i:02}")).collect();
    let requests: Vec<Value> = ids
        .iter()
        .map(|id| search_request(id, 1, RESULTS as u64))
        .collect();
    stack.produce(&requests).await;
    ids
}

fn until_succeeded(status: &mut Collector, ids: &[String], n: usize) {
    status.until(Duration::from_secs(60), "the wave under way", |r| {
        r.iter()
            .filter(|r| {
                r.key.as_ref().is_some_and(|k| ids.contains(k)) && r.json()["status"] == "SUCCEEDED"
            })
            .count()
            >= n
    });
}

/// `toxic` on both directions of `proxy` for `hold`, then removed.
async fn both_ways(proxy: &Proxy, toxic: Toxic, hold: Duration) {
    let up = toxic.clone().upstream();
    proxy.add_toxic(&toxic).await.unwrap();
    proxy.add_toxic(&up).await.unwrap();
    tokio::time::sleep(hold).await;
    proxy.remove_toxic(toxic.name()).await.unwrap();
    proxy.remove_toxic(up.name()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_and_cuts_on_both_api_paths_lose_nothing_and_duplicate_no_result() {
    let toxiproxy = Toxiproxy::from_env().unwrap();
    let tag = &uuid::Uuid::new_v4().simple().to_string()[..8];
    // Callbacks: the URL handed to the API points at this proxy, which forwards to the bridge
    // once the bridge has bound its port.
    let mut callbacks = toxiproxy
        .create_proxy(&format!("callbacks-{tag}"), "127.0.0.1:0", "127.0.0.1:9")
        .await
        .unwrap();
    let sim_toml = fast_sim_config("")
        .replace("max_attempts = 5", "max_attempts = 20")
        .replace("backoff_ms = 100", "backoff_ms = 250")
        .replace("timeout_ms = 5000", "timeout_ms = 1500");
    let topics = Topics::unique("e2e", "faults-api");
    let sim = SimProcess::start(&work_dir(), &sim_toml).unwrap();
    let sim_addr = sim.base.trim_start_matches("http://").to_owned();
    let api = toxiproxy
        .create_proxy(&format!("api-{tag}"), "127.0.0.1:0", &sim_addr)
        .await
        .unwrap();
    let api_base = format!("http://{}/v4", api.listen());
    let settings = bridge_settings(&bootstrap(), &topics, &sim, |s| {
        s.captain.base_url = api_base.clone();
        s.captain.request_timeout = Duration::from_secs(1);
        s.callbacks.public_base_url = Some(format!("http://{}", callbacks.listen()));
    });
    topics.create(&settings).await.unwrap();
    let bridge = BridgeProcess::start(&work_dir(), &settings, &[])
        .await
        .unwrap();
    callbacks
        .set_upstream(&bridge.callback_addr.to_string())
        .await
        .unwrap();
    let stack = Stack {
        topics,
        sim,
        bridge,
        bootstrap: bootstrap(),
    };
    let mut status = Collector::new(&stack.bootstrap, &stack.topics.run_status);
    let mut results = Collector::new(&stack.bootstrap, &stack.topics.run_results);
    let mut all = Vec::new();
    let mut figures = Vec::new();
    let started = Instant::now();

    let phases: [(&str, &Proxy, Toxic, Duration); 4] = [
        (
            "api-latency",
            &api,
            Toxic::latency(Duration::from_millis(400)),
            Duration::from_secs(3),
        ),
        ("api-cut", &api, Toxic::cut(), Duration::from_secs(3)),
        (
            "callback-latency",
            &callbacks,
            Toxic::latency(Duration::from_millis(300)),
            Duration::from_secs(3),
        ),
        (
            "callback-cut",
            &callbacks,
            Toxic::cut(),
            Duration::from_secs(3),
        ),
    ];
    for (phase, proxy, toxic, hold) in phases {
        let ids = wave(&stack, phase).await;
        until_succeeded(&mut status, &ids, 2);
        both_ways(proxy, toxic, hold).await;
        all.extend(ids);
        let replayed = replay_failed_callbacks(&stack.sim).await;
        let ledger = drain(
            &mut status,
            &mut results,
            &all,
            RESULTS,
            Duration::from_secs(90),
            phase,
        );
        eprintln!(
            "e2e faults api: {phase}: {replayed} failed callbacks replayed; {}; {} requests \
             submitted twice",
            ledger.summary(),
            ledger.resubmitted(1)
        );
        figures.push((
            phase,
            ledger.duplicate_results(),
            ledger.repeated_statuses(),
            ledger.resubmitted(1),
        ));
    }
    eprintln!(
        "e2e faults api: {} requests through 4 faults in {:.1} s; sim {}",
        all.len(),
        started.elapsed().as_secs_f64(),
        stack.sim_stats().await["callbacks"]
    );
    for (phase, duplicates, repeated, _) in &figures {
        assert_eq!(*duplicates, 0, "{phase}: a result read twice");
        assert_eq!(*repeated, 0, "{phase}: a status read twice");
    }
    // Only submissions cut after the API took them are made twice: at most the wave in flight.
    let (_, _, _, resubmitted) = figures.last().copied().unwrap();
    assert!(
        resubmitted <= WAVE,
        "{resubmitted} requests submitted twice"
    );
    let _ = api.delete().await;
    let _ = callbacks.delete().await;
}
