//! Helpers for the registry tests: the registry and broker started by scripts/test.sh, a
//! registry of a test's own (to stop and restart), codecs built the way the bridge builds them,
//! and Avro records written as a third-party producer would.

use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::Schema;
use captain_bridge::avro::{
    OutputFormats, OutputTopics, RecordDecoder, RecordEncoder, RegistrySecrets,
    SchemaRegistryClient, SchemaRegistrySettings,
};
use captain_bridge::metrics::Metrics;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

/// The registry started by scripts/test.sh (or by hand with scripts/registry.sh).
pub fn registry_url() -> String {
    std::env::var("SCHEMA_REGISTRY_URL").unwrap_or_else(|_| {
        panic!(
            "SCHEMA_REGISTRY_URL is not set: run the tests with scripts/test.sh, which starts a \
             real schema registry (or start one with scripts/registry.sh start and export the \
             SCHEMA_REGISTRY_URL=... line it prints)"
        )
    })
}

/// The broker started by scripts/test.sh (or by hand with scripts/kafka.sh).
pub fn bootstrap() -> String {
    std::env::var("KAFKA_BOOTSTRAP_SERVERS").unwrap_or_else(|_| {
        panic!(
            "KAFKA_BOOTSTRAP_SERVERS is not set: run the tests with scripts/test.sh, which starts \
             a real Kafka broker (or start one with scripts/kafka.sh start and export it)"
        )
    })
}

/// A name no other test (or earlier run against the same registry) uses.
pub fn unique(prefix: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}.{}", &id[..12])
}

pub fn settings(url: &str) -> SchemaRegistrySettings {
    SchemaRegistrySettings {
        url: url.to_owned(),
        request_timeout: Duration::from_secs(5),
        ..SchemaRegistrySettings::default()
    }
}

pub fn client(settings: &SchemaRegistrySettings, metrics: &Metrics) -> Arc<SchemaRegistryClient> {
    Arc::new(
        SchemaRegistryClient::new(settings, &RegistrySecrets::default(), metrics.clone())
            .expect("registry client"),
    )
}

/// An encoder writing Avro on both output topics.
pub fn avro_encoder(
    settings: &SchemaRegistrySettings,
    topics: &OutputTopics,
    metrics: &Metrics,
) -> RecordEncoder {
    let formats = OutputFormats {
        run_status: captain_bridge::avro::Format::Avro,
        run_results: captain_bridge::avro::Format::Avro,
    };
    RecordEncoder::new(
        &formats,
        topics,
        settings,
        Some(client(settings, metrics)),
        metrics.clone(),
    )
    .expect("encoder")
}

pub fn decoder(settings: &SchemaRegistrySettings, metrics: &Metrics) -> RecordDecoder {
    RecordDecoder::new(Some(client(settings, metrics)), metrics.clone()).expect("decoder")
}

pub fn topics(prefix: &str) -> OutputTopics {
    OutputTopics {
        run_status: unique(&format!("{prefix}.status")),
        run_results: unique(&format!("{prefix}.results")),
    }
}

/// `json` (an object with the schema's field names; unions as plain values) written with
/// `schema` in the wire format under `id`, as any Avro producer would.
pub fn avro_record(id: u32, schema: &Schema, json: serde_json::Value) -> Vec<u8> {
    let value = Value::try_from(json)
        .and_then(|v| v.resolve(schema))
        .expect("value fits the schema");
    let mut out = vec![0];
    out.extend_from_slice(&id.to_be_bytes());
    GenericDatumWriter::builder(schema)
        .build()
        .expect("writer")
        .write_value_ref(&mut out, &value)
        .expect("written");
    out
}

/// A request to the registry's REST API that the codec has no use for (subject config).
pub async fn put_config(url: &str, subject: &str, compatibility: &str) {
    let response = reqwest::Client::new()
        .put(format!("{url}/config/{subject}"))
        .header("content-type", "application/vnd.schemaregistry.v1+json")
        .body(serde_json::json!({ "compatibility": compatibility }).to_string())
        .send()
        .await
        .expect("config request");
    assert!(
        response.status().is_success(),
        "PUT /config/{subject}: {}",
        response.status()
    );
}

pub async fn subjects(url: &str) -> Vec<String> {
    reqwest::get(format!("{url}/subjects"))
        .await
        .expect("subjects request")
        .json()
        .await
        .expect("subject list")
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// A registry of the test's own, serving http and https (a test CA of its own), on fixed ports
/// and with the same CA across restarts, so that it can be stopped and started again at the
/// same URLs. Stopped, and its CA deleted, on drop (a failing test included).
pub struct OwnRegistry {
    instance: String,
    ports: (u16, u16),
    tls_dir: std::path::PathBuf,
    /// The https URL.
    pub tls_url: String,
    /// The PEM file of the CA that signed the registry's certificate.
    pub ca_file: std::path::PathBuf,
}

impl OwnRegistry {
    pub fn start(name: &str) -> Self {
        let instance = format!("{name}-{}", std::process::id());
        let tls_dir = std::env::temp_dir().join(format!("captain-registry-tls-{instance}"));
        let mut registry = Self {
            instance,
            ports: (free_port(), free_port()),
            ca_file: tls_dir.join("ca.pem"),
            tls_dir,
            tls_url: String::new(),
        };
        registry.tls_url = registry.run("start");
        registry
    }

    pub fn stop(&self) {
        self.run("stop");
    }

    pub fn restart(&self) {
        let url = self.run("start");
        assert_eq!(url, self.tls_url, "the registry came back at another URL");
    }

    /// Runs scripts/registry.sh; the https URL it printed.
    fn run(&self, command: &str) -> String {
        let output = Command::new(repo().join("scripts/registry.sh"))
            .arg(command)
            .env("CAPTAIN_REGISTRY_INSTANCE", &self.instance)
            .env("REGISTRY_PORT", self.ports.0.to_string())
            .env("REGISTRY_TLS_PORT", self.ports.1.to_string())
            .env("REGISTRY_TLS_DIR", &self.tls_dir)
            .output()
            .expect("scripts/registry.sh runs");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "scripts/registry.sh {command} failed: {}{}",
            stdout,
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
            .lines()
            .find_map(|l| l.strip_prefix("SCHEMA_REGISTRY_TLS_URL="))
            .unwrap_or_default()
            .to_owned()
    }
}

impl Drop for OwnRegistry {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.tls_dir);
    }
}

/// Runs `probe` until it returns `Some`, at most `limit`: the way to wait for a condition
/// (a registry that is back, a retry that goes through) without guessing a sleep.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
