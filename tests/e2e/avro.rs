//! Avro on the wire, end to end: the real bridge with `kafka.formats` set, a real schema
//! registry (Apicurio's Confluent-compatible API, started by scripts/test.sh), real Kafka and
//! captain-sim. The outputs are read back the way any downstream consumer would: each value's
//! writer schema fetched from the registry by the id in its header (not through the bridge's
//! codec), and by Confluent's own Python deserializer.

use crate::*;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::types::Value as Avro;
use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::Schema;
use captain_bridge::avro::{Contract, Format, RecordKind};
use captain_bridge::token::{callback_url, CallbackClaims, TokenKeys};
use captain_testkit::toxiproxy::Toxiproxy;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::FutureRecord;
use rdkafka::{Offset, TopicPartitionList};
use std::path::Path;
use std::time::{Duration, Instant};

/// The registry started by scripts/test.sh (or by hand with scripts/registry.sh).
fn registry_url() -> String {
    std::env::var("SCHEMA_REGISTRY_URL").unwrap_or_else(|_| {
        panic!(
            "SCHEMA_REGISTRY_URL is not set: run the tests with scripts/test.sh, which starts a \
             real schema registry (or start one with scripts/registry.sh start and export the \
             SCHEMA_REGISTRY_URL=... line it prints)"
        )
    })
}

/// Both output topics in Avro through the registry at `url`.
fn avro_outputs(s: &mut Settings, url: &str) {
    s.schema_registry.url = url.to_owned();
    s.schema_registry.request_timeout = Duration::from_secs(2);
    s.kafka.formats.run_status = Format::Avro;
    s.kafka.formats.run_results = Format::Avro;
}

/// Reads Avro values back through the registry: writer schema by id (`GET /schemas/ids/{id}`,
/// cached), datum decoded with it, JSON text fields parsed back, so that the records can be
/// checked with the same ledger helpers as the JSON flow tests.
struct RegistryReader {
    url: String,
    http: reqwest::Client,
    schemas: HashMap<u32, Schema>,
}

impl RegistryReader {
    fn new(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            http: reqwest::Client::new(),
            schemas: HashMap::new(),
        }
    }

    async fn schema(&mut self, id: u32) -> &Schema {
        if !self.schemas.contains_key(&id) {
            let answer: Value = self
                .http
                .get(format!("{}/schemas/ids/{id}", self.url))
                .send()
                .await
                .and_then(reqwest::Response::error_for_status)
                .unwrap_or_else(|e| panic!("schema id {id} from the registry: {e}"))
                .json()
                .await
                .unwrap();
            let text = answer["schema"].as_str().expect("a schema text");
            self.schemas
                .insert(id, Schema::parse_str(text).expect("an Avro schema"));
        }
        &self.schemas[&id]
    }

    /// The record with its value as the JSON the JSON format would have carried.
    async fn json(&mut self, read: &Read) -> Read {
        let value = read.value.as_deref().expect("a value");
        assert!(
            value.len() > 5 && value[0] == 0,
            "not the Confluent wire format: {:?}",
            &value[..value.len().min(16)]
        );
        let id = u32::from_be_bytes([value[1], value[2], value[3], value[4]]);
        let schema = self.schema(id).await;
        let mut datum = &value[5..];
        let decoded = GenericDatumReader::builder(schema)
            .build()
            .unwrap()
            .read_value(&mut datum)
            .unwrap_or_else(|e| panic!("not a datum of schema id {id}: {e}"));
        assert!(datum.is_empty(), "bytes left after the datum");
        let mut json = Value::try_from(decoded).unwrap();
        for field in ["input", "custom_data", "result"] {
            if let Some(text) = json[field].as_str() {
                json[field] = serde_json::from_str(text).expect("JSON text");
            }
        }
        Read {
            value: Some(serde_json::to_vec(&json).unwrap()),
            ..read.clone()
        }
    }

    /// Reads `topic` until `done` holds for its decoded records (panics after `timeout`).
    async fn until(
        &mut self,
        collector: &mut Collector,
        decoded: &mut Vec<Read>,
        timeout: Duration,
        what: &str,
        done: impl Fn(&[Read]) -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        loop {
            while decoded.len() < collector.records.len() {
                let next = self.json(&collector.records[decoded.len()]).await;
                decoded.push(next);
            }
            if done(decoded) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what} ({} records read)",
                decoded.len()
            );
            collector.poll_for(Duration::from_millis(200));
        }
    }

    /// The id of the latest schema under `subject`.
    async fn latest_id(&self, subject: &str) -> u32 {
        let answer: Value = self
            .http
            .get(format!("{}/subjects/{subject}/versions/latest", self.url))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .unwrap_or_else(|e| panic!("subject {subject}: {e}"))
            .json()
            .await
            .unwrap();
        u32::try_from(answer["id"].as_u64().expect("an id")).unwrap()
    }

    /// Registers `schema` under `subject` as any producer would; its id.
    async fn register(&self, subject: &str, schema: &str) -> u32 {
        let answer: Value = self
            .http
            .post(format!("{}/subjects/{subject}/versions", self.url))
            .header("content-type", "application/vnd.schemaregistry.v1+json")
            .body(json!({ "schema": schema }).to_string())
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .unwrap_or_else(|e| panic!("register under {subject}: {e}"))
            .json()
            .await
            .unwrap();
        u32::try_from(answer["id"].as_u64().expect("an id")).unwrap()
    }
}

/// `request` (the JSON form) written as an Avro producer would: open objects as JSON text.
fn avro_launch(id: u32, schema: &Schema, request: &Value) -> Vec<u8> {
    let mut shaped = json!({
        "request_id": request["request_id"], "action": request["action"],
        "mode": request.get("mode").cloned().unwrap_or(Value::Null),
        "inputs": request["inputs"].as_array().unwrap().iter().map(|i| i.to_string()).collect::<Vec<_>>(),
        "parameters": request.get("parameters").map_or(Value::Null, |p| Value::String(p.to_string())),
        "identity_ids": null, "identity_mode": null, "schedule": null,
        "metadata": request["metadata"],
    });
    if let Some(extra) = request.get("origin") {
        shaped["origin"] = extra.clone();
    }
    let value = Avro::try_from(shaped)
        .and_then(|v| v.resolve(schema))
        .expect("the request fits the schema");
    let mut out = vec![0];
    out.extend_from_slice(&id.to_be_bytes());
    GenericDatumWriter::builder(schema)
        .build()
        .unwrap()
        .write_value_ref(&mut out, &value)
        .unwrap();
    out
}

/// Produces one record; its partition and offset.
async fn produce_one(bootstrap: &str, topic: &str, key: &str, value: &[u8]) -> (i32, i64) {
    let producer = captain_testkit::kafka::producer(bootstrap).unwrap();
    let delivery = producer
        .send(
            FutureRecord::to(topic).key(key).payload(value),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    (delivery.partition, delivery.offset)
}

/// The offsets `group` committed on `topic`'s partitions (-1: none).
fn committed(bootstrap: &str, group: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let got = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap();
    (0..partitions)
        .map(|p| match got.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o,
            _ => -1,
        })
        .collect()
}

/// Confluent's Python client with its AvroDeserializer (scripts/avro-consumer.sh) reading
/// `count` records of `topic`: one JSON object per record.
fn python_consumer(bootstrap: &str, registry: &str, topic: &str, count: usize) -> Vec<Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/avro-consumer.sh");
    let output = std::process::Command::new(script)
        .args(["consume", "--bootstrap", bootstrap, "--registry", registry])
        .args(["--topic", topic, "--count", &count.to_string()])
        .args(["--timeout", "120"])
        .output()
        .expect("scripts/avro-consumer.sh runs");
    assert!(
        output.status.success(),
        "the Python consumer failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON record per line"))
        .collect()
}

async fn gauge(bridge: &BridgeProcess, part: &str) -> Option<f64> {
    let scrape = bridge.metrics().await.ok()?;
    metric(
        &scrape,
        &format!("captain_bridge_schema_registry_waiting{{part=\"{part}\"}}"),
    )
}

async fn readyz(bridge: &BridgeProcess) -> (u16, String) {
    let answer = reqwest::get(format!("http://{}/readyz", bridge.ops_addr))
        .await
        .unwrap();
    (answer.status().as_u16(), answer.text().await.unwrap())
}

/// Waits until `probe` holds (panics after `limit`).
async fn eventually<F, Fut>(limit: Duration, what: &str, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !probe().await {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_avro_on_every_output_topic_the_flow_ledger_reads_back_through_the_registry() {
    const REQUESTS: usize = 10;
    const INPUTS: usize = 3;
    const RESULTS: u64 = 5;
    let url = registry_url();
    let stack = Stack::start("avro-flow", &fast_sim_config(""), |s| avro_outputs(s, &url)).await;
    let requests: Vec<Value> = (0..REQUESTS)
        .map(|i| search_request(&format!("avro-{i}"), INPUTS, RESULTS))
        .collect();
    stack.produce(&requests).await;

    let mut reader = RegistryReader::new(&url);
    let mut status = Collector::new(&stack.bootstrap, &stack.topics.run_status);
    let mut statuses = Vec::new();
    reader
        .until(
            &mut status,
            &mut statuses,
            Duration::from_secs(90),
            "every request SUCCEEDED",
            |r| final_status_count(r, "SUCCEEDED") >= REQUESTS,
        )
        .await;
    let expected_results = REQUESTS * INPUTS * RESULTS as usize;
    let mut results = Collector::new(&stack.bootstrap, &stack.topics.run_results);
    let mut ledger = Vec::new();
    reader
        .until(
            &mut results,
            &mut ledger,
            Duration::from_secs(60),
            "every result",
            |r| r.len() >= expected_results,
        )
        .await;
    // Late duplicates would arrive within the callbacks' retry delay: look a little longer.
    results.poll_for(Duration::from_secs(1));
    reader
        .until(&mut results, &mut ledger, Duration::ZERO, "", |_| true)
        .await;

    // The writer ids are the ones registered under the TopicNameStrategy subjects.
    let status_id = reader
        .latest_id(&format!("{}-value", stack.topics.run_status))
        .await;
    let results_id = reader
        .latest_id(&format!("{}-value", stack.topics.run_results))
        .await;
    for (records, id) in [(&status.records, status_id), (&results.records, results_id)] {
        for r in records {
            let v = r.value.as_deref().unwrap();
            assert_eq!(v[..5], [&[0u8][..], &id.to_be_bytes()].concat());
        }
    }

    // The flow test's ledger, on the decoded records.
    let counts = result_id_counts(&ledger);
    assert_eq!(counts.len(), expected_results, "distinct result ids");
    assert!(
        counts.values().all(|&n| n == 1),
        "a result was published twice"
    );
    for r in &ledger {
        let v = r.json();
        let id = v["request_id"].as_str().unwrap();
        assert_eq!(
            r.key.as_deref(),
            Some(id),
            "results are keyed by request_id"
        );
        assert_eq!(v["metadata"]["ticket"], id, "metadata is echoed on results");
        assert_eq!(v["action"], "linkedin-search-people");
        assert!(
            v["custom_data"]["row"].is_string(),
            "custom_data is carried: {v}"
        );
        assert!(v["result"].is_object());
        assert!(v["input"]["linkedin_people_search_url"].is_string(), "{v}");
    }
    let by_request = statuses_by_request(&statuses);
    assert_eq!(by_request.len(), REQUESTS);
    for (id, events) in &by_request {
        assert_transitions_in_order(events);
        let last = events.last().unwrap();
        assert_eq!(last["status"], "SUCCEEDED", "{id}: {events:#?}");
        assert_eq!(last["metadata"]["ticket"], id.as_str());
        assert_eq!(events[0]["status"], "CREATED");
        assert_eq!(
            events.iter().filter(|e| e["status"] == "SUCCEEDED").count(),
            1,
            "{id} reached SUCCEEDED once"
        );
    }

    // A consumer that is not ours: Confluent's deserializer reads the same records.
    let theirs = python_consumer(
        &stack.bootstrap,
        &url,
        &stack.topics.run_results,
        ledger.len(),
    );
    let ours: HashMap<String, Value> = ledger
        .iter()
        .map(|r| {
            let v = r.json();
            (v["result_id"].as_str().unwrap().to_owned(), v)
        })
        .collect();
    for line in &theirs {
        assert_eq!(line["schema_id"], results_id);
        let mut value = line["value"].clone();
        for field in ["input", "custom_data", "result"] {
            if let Some(text) = value[field].as_str() {
                value[field] = serde_json::from_str(text).unwrap();
            }
        }
        let id = value["result_id"].as_str().unwrap().to_owned();
        assert_eq!(Some(&value), ours.get(&id), "{id}");
        assert_eq!(line["key"], value["request_id"]);
    }
    let theirs = python_consumer(
        &stack.bootstrap,
        &url,
        &stack.topics.run_status,
        statuses.len(),
    );
    let ours: Vec<Value> = statuses.iter().map(Read::json).collect();
    for line in &theirs {
        assert!(ours.contains(&line["value"]), "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn avro_and_json_launch_requests_share_the_topic_and_each_undecodable_one_is_dead_lettered_by_class(
) {
    let url = registry_url();
    // Formats are per topic: statuses stay JSON here, results are Avro.
    let stack = Stack::start("avro-mixed", &fast_sim_config(""), |s| {
        s.schema_registry.url = url.clone();
        s.kafka.formats.run_results = Format::Avro;
    })
    .await;
    let reader = RegistryReader::new(&url);
    let contract = Contract::get().unwrap().schema(RecordKind::LaunchRequest);
    let launch_subject = format!("{}-value", stack.topics.launch_requests);
    let id = reader
        .register(&launch_subject, &contract.registration_text)
        .await;
    // A writer schema the bridge cannot read as a LaunchRequest: `action` became an int.
    let changed = r#"{"type":"record","name":"LaunchRequest","namespace":"dev.captainbridge","fields":[
        {"name":"action","type":"int"},{"name":"inputs","type":{"type":"array","items":"string"}}]}"#;
    let changed_id = reader
        .register(
            &format!("{}-other-value", stack.topics.launch_requests),
            changed,
        )
        .await;
    let changed_schema = Schema::parse_str(changed).unwrap();

    let avro = |rid: &str| avro_launch(id, &contract.schema, &search_request(rid, 1, 2));
    let good = avro("avro-a");
    let mut unknown_id = good.clone();
    unknown_id[1..5].copy_from_slice(&2_000_000_000u32.to_be_bytes());
    let mut wrong_magic = good.clone();
    wrong_magic[0] = 1;
    let mut malformed = good[..5].to_vec();
    malformed.extend_from_slice(&[0x0a, 0xff, 0xff, 0xff, 0x7f]);
    let incompatible = {
        let value = Avro::try_from(json!({"action": 3, "inputs": ["{}"]}))
            .and_then(|v| v.resolve(&changed_schema))
            .unwrap();
        let mut out = vec![0];
        out.extend_from_slice(&changed_id.to_be_bytes());
        GenericDatumWriter::builder(&changed_schema)
            .build()
            .unwrap()
            .write_value_ref(&mut out, &value)
            .unwrap();
        out
    };
    let records: Vec<(&str, Vec<u8>, Option<&str>)> = vec![
        (
            "json-a",
            serde_json::to_vec(&search_request("json-a", 1, 2)).unwrap(),
            None,
        ),
        ("avro-a", good.clone(), None),
        (
            "json-b",
            serde_json::to_vec(&search_request("json-b", 1, 2)).unwrap(),
            None,
        ),
        ("avro-b", avro("avro-b"), None),
        ("bad-unknown-id", unknown_id, Some("unknown_schema_id")),
        (
            "bad-truncated",
            good[..good.len() - 3].to_vec(),
            Some("truncated_payload"),
        ),
        ("bad-magic", wrong_magic, Some("wrong_magic_byte")),
        (
            "bad-incompatible",
            incompatible,
            Some("incompatible_schema"),
        ),
        ("bad-malformed", malformed, Some("malformed_avro")),
    ];
    let producer = captain_testkit::kafka::producer(&stack.bootstrap).unwrap();
    captain_testkit::kafka::produce(
        &producer,
        &stack.topics.launch_requests,
        records
            .iter()
            .map(|(key, value, _)| ((*key).to_owned(), Some(value.clone()), None)),
        100,
    )
    .await
    .unwrap();

    let mut status = Collector::new(&stack.bootstrap, &stack.topics.run_status);
    status.until(Duration::from_secs(90), "4 SUCCEEDED and 5 REJECTED", |r| {
        final_status_count(r, "SUCCEEDED") >= 4 && final_status_count(r, "REJECTED") >= 5
    });
    let mut dead = Collector::new(&stack.bootstrap, &stack.topics.dead_letter);
    dead.until(Duration::from_secs(30), "5 dead letters", |r| r.len() >= 5);
    dead.poll_for(Duration::from_millis(500));
    assert_eq!(dead.records.len(), 5, "only the undecodable records");
    for (key, value, class) in &records {
        let Some(class) = class else { continue };
        let letter = dead
            .records
            .iter()
            .find(|r| r.key.as_deref() == Some(*key))
            .unwrap_or_else(|| panic!("{key} not dead-lettered"));
        assert_eq!(letter.headers["captain.error.class"], *class, "{key}");
        assert!(!letter.headers["captain.error.reason"].is_empty());
        assert_eq!(
            letter.value.as_deref(),
            Some(&value[..]),
            "{key}: original bytes kept"
        );
        assert_eq!(
            letter.headers["captain.source.topic"],
            stack.topics.launch_requests.as_str()
        );
        let request_id = &letter.headers["captain.request_id"];
        let rejected: Vec<Value> = status
            .records
            .iter()
            .map(Read::json)
            .filter(|e| e["request_id"] == request_id.as_str())
            .collect();
        assert_eq!(rejected.len(), 1, "{key}: {rejected:?}");
        assert_eq!(rejected[0]["status"], "REJECTED");
        assert_eq!(rejected[0]["error"]["label"], class.to_uppercase());
    }
    let by_request = statuses_by_request(&status.records);
    for id in ["json-a", "json-b", "avro-a", "avro-b"] {
        assert_eq!(
            by_request[id].last().unwrap()["status"],
            "SUCCEEDED",
            "{id}"
        );
    }

    // The results of the Avro and the JSON requests alike, Avro on the results topic.
    let mut reader = reader;
    let mut results = Collector::new(&stack.bootstrap, &stack.topics.run_results);
    let mut ledger = Vec::new();
    reader
        .until(
            &mut results,
            &mut ledger,
            Duration::from_secs(30),
            "8 results",
            |r| r.len() >= 8,
        )
        .await;
    for id in ["json-a", "json-b", "avro-a", "avro-b"] {
        let mine: Vec<Value> = ledger
            .iter()
            .map(Read::json)
            .filter(|v| v["request_id"] == id)
            .collect();
        assert_eq!(mine.len(), 2, "{id}");
        assert!(mine
            .iter()
            .all(|v| v["metadata"]["ticket"] == id && v["custom_data"]["row"] == "0"));
    }
    let scrape = stack.metrics().await;
    for class in [
        "unknown_schema_id",
        "truncated_payload",
        "wrong_magic_byte",
        "incompatible_schema",
        "malformed_avro",
    ] {
        let counted = metric(
            &scrape,
            &format!("captain_bridge_avro_decode_errors_total{{class=\"{class}\",topic=\"launch_requests\"}}"),
        );
        assert_eq!(counted, Some(1.0), "{class}");
    }

    // The control topic reads Avro the same way: a command in Avro reaches the owner (here
    // about a request this deployment never saw: refused on the status topic, source control),
    // and one with an unknown writer schema id is dead-lettered with its class.
    let control = Contract::get().unwrap().schema(RecordKind::ControlCommand);
    let control_id = reader
        .register(
            &format!("{}-value", stack.topics.control),
            &control.registration_text,
        )
        .await;
    let command = Avro::try_from(json!({
        "command_id": "cmd-avro-1", "command": "reconcile_now", "request_id": "nobody-here",
        "run_uid": null, "schedule_uid": null, "reason": "checked from Avro",
    }))
    .and_then(|v| v.resolve(&control.schema))
    .expect("the command fits the schema");
    let mut good_command = vec![0];
    good_command.extend_from_slice(&control_id.to_be_bytes());
    GenericDatumWriter::builder(&control.schema)
        .build()
        .unwrap()
        .write_value_ref(&mut good_command, &command)
        .unwrap();
    let mut unknown_command = good_command.clone();
    unknown_command[1..5].copy_from_slice(&2_000_000_001u32.to_be_bytes());
    produce_one(
        &stack.bootstrap,
        &stack.topics.control,
        "nobody-here",
        &good_command,
    )
    .await;
    produce_one(
        &stack.bootstrap,
        &stack.topics.control,
        "bad-command",
        &unknown_command,
    )
    .await;
    status.until(Duration::from_secs(60), "the Avro command's answer", |r| {
        r.iter()
            .map(Read::json)
            .any(|e| e["request_id"] == "nobody-here")
    });
    let answer = status
        .records
        .iter()
        .map(Read::json)
        .find(|e| e["request_id"] == "nobody-here")
        .unwrap();
    assert_eq!(answer["source"], "control", "{answer}");
    assert_eq!(answer["command"]["command_id"], "cmd-avro-1", "{answer}");
    assert_eq!(answer["command"]["reason"], "checked from Avro", "{answer}");
    assert_eq!(answer["command"]["outcome"], "refused", "{answer}");
    dead.until(Duration::from_secs(30), "the undecodable command", |r| {
        r.iter().any(|r| r.key.as_deref() == Some("bad-command"))
    });
    let letter = dead
        .records
        .iter()
        .find(|r| r.key.as_deref() == Some("bad-command"))
        .unwrap();
    assert_eq!(letter.headers["captain.error.class"], "unknown_schema_id");
    assert_eq!(
        letter.headers["captain.source.topic"],
        stack.topics.control.as_str()
    );
    assert_eq!(letter.value.as_deref(), Some(&unknown_command[..]));
}

/// A signed callback for `request_id` (chunk 0) with `results` items, as the platform posts it.
fn callback(bridge: &BridgeProcess, request_id: &str, results: usize) -> (String, String) {
    let keys = TokenKeys::from_config(captain_testkit::CALLBACK_KEYS, captain_testkit::SIGNING_KID)
        .unwrap();
    let token = keys.sign(&CallbackClaims {
        request_id: request_id.to_owned(),
        chunk: 0,
        expires_at: None,
    });
    let items: Vec<Value> = (0..results)
        .map(|i| json!({"full_name": format!("ghost {i}")}))
        .collect();
    let body = json!({
        "run": {"run_uid": format!("run-{request_id}"), "batch_uid": "batch-1", "status": "RUNNING"},
        "input": {"linkedin_profile_url": "https://www.linkedin.com/in/ghost"},
        "custom_data": {"row": "g"}, "error": null,
        "results_count": results, "results": items,
    });
    (
        callback_url(&bridge.callback_base(), &token),
        body.to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_lost_mid_stream_loses_nothing_commits_nothing_early_and_recovers() {
    const REQUESTS: usize = 4;
    const INPUTS: usize = 2;
    const RESULTS: u64 = 10;
    let url = registry_url();
    // The bridge reaches the registry through a proxy the test takes down and up again (the
    // registry itself keeps its schemas, as a real one does across an outage).
    let toxiproxy = Toxiproxy::from_env().expect(
        "TOXIPROXY_URL is not set: run the tests with scripts/test.sh, which starts Toxiproxy",
    );
    let (upstream, path) = url
        .strip_prefix("http://")
        .and_then(|rest| rest.split_once('/'))
        .map(|(host, path)| (host.to_owned(), format!("/{path}")))
        .expect("an http://host:port/path registry URL");
    let mut proxy = toxiproxy
        .create_proxy(
            &format!("registry-{}", uuid::Uuid::new_v4().simple()),
            "127.0.0.1:0",
            &upstream,
        )
        .await
        .unwrap();
    let proxied = format!("http://{}{path}", proxy.listen());
    // Runs deliver their pages over ~2 s, so callbacks keep coming while the registry is away.
    let sim = fast_sim_config("").replace("page_interval_ms = 2", "page_interval_ms = 400");
    let mut stack = Stack::start("avro-outage", &sim, |s| {
        avro_outputs(s, &proxied);
        s.kafka.session_timeout = Duration::from_secs(6);
        s.processing.revoke_drain = Duration::from_secs(1);
        s.kafka.transaction_timeout = Duration::from_secs(7);
    })
    .await;
    let mut reader = RegistryReader::new(&url);
    let requests: Vec<Value> = (0..REQUESTS)
        .map(|i| search_request(&format!("early-{i}"), INPUTS, RESULTS))
        .collect();
    stack.produce(&requests).await;
    let mut status = Collector::new(&stack.bootstrap, &stack.topics.run_status);
    let mut statuses = Vec::new();
    reader
        .until(
            &mut status,
            &mut statuses,
            Duration::from_secs(60),
            "every run CREATED",
            |r| final_status_count(r, "CREATED") >= REQUESTS,
        )
        .await;

    // The registry goes away mid-stream.
    proxy.set_enabled(false).await.unwrap();
    // A producer moves to a new version of the launch schema meanwhile: an id this bridge has
    // never seen, so decoding its records needs the registry.
    let contract = Contract::get().unwrap().schema(RecordKind::LaunchRequest);
    let mut newer: Value = serde_json::from_str(&contract.registration_text).unwrap();
    newer["fields"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "origin", "type": ["null", "string"], "default": null}));
    let newer_schema = Schema::parse_str(&newer.to_string()).unwrap();
    let newer_id = reader
        .register(
            &format!("{}-value", stack.topics.launch_requests),
            &newer.to_string(),
        )
        .await;
    let mut late = search_request("avro-late", 1, 2);
    late["origin"] = json!("crm");
    let (late_partition, late_offset) = produce_one(
        &stack.bootstrap,
        &stack.topics.launch_requests,
        "avro-late",
        &avro_launch(newer_id, &newer_schema, &late),
    )
    .await;

    // Outputs whose schema ids are known need no registry: the runs under way finish.
    let expected_early = REQUESTS * INPUTS * RESULTS as usize;
    let mut results = Collector::new(&stack.bootstrap, &stack.topics.run_results);
    let mut ledger = Vec::new();
    reader
        .until(
            &mut results,
            &mut ledger,
            Duration::from_secs(60),
            "the early results",
            |r| r.len() >= expected_early,
        )
        .await;
    reader
        .until(
            &mut status,
            &mut statuses,
            Duration::from_secs(30),
            "early SUCCEEDED",
            |r| final_status_count(r, "SUCCEEDED") >= REQUESTS,
        )
        .await;
    // The record that needs the registry waits, uncommitted, its partitions paused.
    eventually(
        Duration::from_secs(30),
        "the launch router waiting",
        || async { gauge(&stack.bridge, "launch_router").await == Some(1.0) },
    )
    .await;
    let (code, body) = readyz(&stack.bridge).await;
    assert_eq!(
        (code, body.as_str()),
        (200, "ready; waiting for the schema registry: launch_router")
    );
    let launch_partitions = stack.bridge.settings().kafka.partitions;
    let router_commits = committed(
        &stack.bootstrap,
        &stack.topics.group,
        &stack.topics.launch_requests,
        launch_partitions,
    );
    assert!(
        router_commits[late_partition as usize] <= late_offset,
        "the held record's offset was committed: {router_commits:?} vs {late_offset}"
    );

    // A restart while the registry is still away: the bridge starts anyway and takes
    // callbacks, and its owners hold their partitions since no output schema id is known.
    stack.bridge.restart().await.unwrap();
    eventually(
        Duration::from_secs(30),
        "outputs waiting after the restart",
        || async { gauge(&stack.bridge, "outputs").await == Some(1.0) },
    )
    .await;
    let (code, body) = readyz(&stack.bridge).await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("outputs"), "{body}");
    let (url_ghost, body_ghost) = callback(&stack.bridge, "ghost", 3);
    let answer = reqwest::Client::new()
        .post(url_ghost)
        .header("content-type", "application/json")
        .body(body_ghost)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 200, "callbacks need no registry");
    stack.produce(&[search_request("json-late", 1, 2)]).await;
    // Nothing is published, nothing of it committed, while the registry stays away.
    let published = results.records.len();
    let owners = captain_bridge::app::owner_group(stack.bridge.settings());
    let mut intake = Collector::new(&stack.bootstrap, &stack.topics.callbacks);
    intake.until(
        Duration::from_secs(10),
        "the ghost callback in the intake",
        |r| r.iter().any(|r| r.key.as_deref() == Some("ghost")),
    );
    let ghost = intake
        .records
        .iter()
        .find(|r| r.key.as_deref() == Some("ghost"))
        .unwrap()
        .clone();
    results.poll_for(Duration::from_secs(3));
    assert_eq!(
        results.records.len(),
        published,
        "published without the registry"
    );
    let owner_commits = committed(
        &stack.bootstrap,
        &owners,
        &stack.topics.callbacks,
        launch_partitions,
    );
    assert!(
        owner_commits[ghost.partition as usize] <= ghost.offset,
        "the ghost callback was committed before its results: {owner_commits:?}"
    );

    // The registry is back: everything goes through, once.
    proxy.set_enabled(true).await.unwrap();
    reader
        .until(
            &mut status,
            &mut statuses,
            Duration::from_secs(90),
            "the late requests SUCCEEDED",
            |r| {
                let by = statuses_by_request(r);
                ["avro-late", "json-late"].iter().all(|id| {
                    by.get(*id)
                        .is_some_and(|e| e.iter().any(|e| e["status"] == "SUCCEEDED"))
                })
            },
        )
        .await;
    let expected = expected_early + 2 + 2 + 3;
    reader
        .until(
            &mut results,
            &mut ledger,
            Duration::from_secs(60),
            "every result",
            |r| r.len() >= expected,
        )
        .await;
    results.poll_for(Duration::from_secs(1));
    reader
        .until(&mut results, &mut ledger, Duration::ZERO, "", |_| true)
        .await;
    let counts = result_id_counts(&ledger);
    assert_eq!(counts.len(), expected, "every result, the ghost's included");
    assert!(
        counts.values().all(|&n| n == 1),
        "a result was published twice"
    );
    assert_eq!(
        ledger
            .iter()
            .filter(|r| r.json()["request_id"] == "ghost")
            .count(),
        3
    );
    for (id, events) in statuses_by_request(&statuses) {
        if id == "ghost" {
            continue;
        }
        assert_transitions_in_order(&events);
        assert_eq!(
            events.iter().filter(|e| e["status"] == "SUCCEEDED").count(),
            1,
            "{id}: {events:#?}"
        );
    }
    eventually(
        Duration::from_secs(30),
        "nothing waits any more",
        || async {
            gauge(&stack.bridge, "outputs").await == Some(0.0)
                && gauge(&stack.bridge, "launch_router").await == Some(0.0)
        },
    )
    .await;
    let router_commits = committed(
        &stack.bootstrap,
        &stack.topics.group,
        &stack.topics.launch_requests,
        launch_partitions,
    );
    assert!(router_commits[late_partition as usize] > late_offset);
    proxy.delete().await.unwrap();
}
