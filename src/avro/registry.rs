//! The schema registry client: the Confluent REST API through `schema_registry_converter`
//! (reqwest + rustls, basic or bearer auth, several URLs tried in order), with what that crate
//! leaves to its callers: errors classified by HTTP status into retry-later, refused and
//! unusable answers; a lookup that never registers; subject naming; a custom CA and mutual
//! TLS; and a latency histogram and failure counter per operation. Credentials never reach a
//! log line: this type's `Debug` shows the URLs without userinfo and nothing else.

use super::error::RegistryError;
use super::settings::{redact_url, RegistrySecrets, SchemaRegistrySettings, SubjectNameStrategy};
use crate::metrics::Metrics;
use apache_avro::Schema;
use schema_registry_converter::async_impl::avro::AvroDecoder;
use schema_registry_converter::async_impl::schema_registry::{
    get_schema_by_subject_and_version, is_compatible_schema, perform_sr_call, post_schema,
    SrSettings,
};
use schema_registry_converter::error::SRCError;
use schema_registry_converter::schema_registry_common::{
    RawError, SchemaType, SrCall, SuppliedSchema,
};
use secrecy::ExposeSecret;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

/// The subject a record's schema is registered under, for values of `topic`.
pub fn subject_name(strategy: SubjectNameStrategy, topic: &str, record_full_name: &str) -> String {
    match strategy {
        SubjectNameStrategy::TopicName => format!("{topic}-value"),
        SubjectNameStrategy::RecordName => record_full_name.to_owned(),
    }
}

/// What a lookup of a schema by id found.
#[derive(Debug, Clone, PartialEq)]
pub enum SchemaById {
    Found(Arc<Schema>),
    /// The registry has no schema with this id (HTTP 404).
    NotFound,
    /// The id names a schema the codec cannot use (not Avro, or one that does not parse).
    Unusable(String),
}

/// A Confluent-compatible schema registry.
#[derive(Clone)]
pub struct SchemaRegistryClient {
    settings: SrSettings,
    /// Fetches schemas by id and resolves their references; it also caches them (the codec
    /// keeps its own bounded cache in front, so this one only holds what the codec asked for).
    decoder: Arc<AvroDecoder>,
    urls: Vec<String>,
    metrics: Metrics,
}

impl std::fmt::Debug for SchemaRegistryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchemaRegistryClient")
            .field(
                "urls",
                &self.urls.iter().map(|u| redact_url(u)).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl SchemaRegistryClient {
    /// A client for the configured registry. Fails on an empty URL or unreadable TLS files.
    pub fn new(
        config: &SchemaRegistrySettings,
        secrets: &RegistrySecrets,
        metrics: Metrics,
    ) -> Result<Self, RegistryError> {
        let urls = config.urls();
        let mut rest = urls.iter();
        let first = rest
            .next()
            .ok_or_else(|| RegistryError::Setup("no schema_registry.url".into()))?;
        let mut builder = SrSettings::new_builder(first.clone());
        for url in rest {
            builder.add_url(url.clone());
        }
        builder.set_timeout(config.request_timeout);
        if let Some(token) = &secrets.token {
            builder.set_token_authorization(token.expose_secret());
        } else if let (Some(user), Some(password)) = (&config.username, &secrets.password) {
            builder.set_basic_authorization(user, Some(password.expose_secret()));
        } else if let Some(user) = &config.username {
            builder.set_basic_authorization(user, None);
        }
        let mut client = reqwest::Client::builder().connect_timeout(config.request_timeout);
        if let Some(path) = &config.ca_file {
            let pem = read(path, "schema_registry.ca_file")?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                RegistryError::Setup(format!("schema_registry.ca_file {}: {e}", path.display()))
            })?;
            // A private CA replaces the system roots: the registry is not a public site.
            client = client.tls_certs_only(certs);
        }
        if let Some(path) = &config.identity_file {
            let pem = read(path, "schema_registry.identity_file")?;
            let identity = reqwest::Identity::from_pem(&pem).map_err(|e| {
                RegistryError::Setup(format!(
                    "schema_registry.identity_file {}: {e}",
                    path.display()
                ))
            })?;
            client = client.identity(identity);
        }
        let settings = builder
            .build_with(client)
            .map_err(|e| RegistryError::Setup(describe(&e)))?;
        Ok(Self {
            decoder: Arc::new(AvroDecoder::new(settings.clone())),
            settings,
            urls,
            metrics,
        })
    }

    /// The writer schema with id `id`, references resolved.
    pub async fn schema_by_id(&self, id: u32) -> Result<SchemaById, RegistryError> {
        const OP: &str = "schema_by_id";
        let outcome = self
            .observe(OP, async {
                match self.decoder.get_schema(id).await {
                    Ok(schema) => Ok(Ok(schema)),
                    Err(e) => match classify(OP, &e) {
                        Failure::NotFound { .. } => Ok(Err(SchemaById::NotFound)),
                        Failure::Registry(RegistryError::Invalid { reason, .. }) => {
                            Ok(Err(SchemaById::Unusable(reason)))
                        }
                        Failure::Registry(other) => Err(other),
                    },
                }
            })
            .await;
        if !matches!(outcome, Ok(Ok(_))) {
            // The crate caches every failure it deems permanent, 404s and 5xx included; the
            // codec decides what to remember (for how long), so nothing stays here.
            self.decoder.remove_errors_from_cache();
        }
        match outcome {
            Ok(Ok(schema)) => Ok(SchemaById::Found(Arc::new(schema.parsed.clone()))),
            Ok(Err(missing)) => {
                let class = match missing {
                    SchemaById::NotFound => "not_found",
                    _ => "unusable",
                };
                self.failed(OP, class);
                Ok(missing)
            }
            Err(e) => Err(e),
        }
    }

    /// Registers `schema` (Avro JSON text) under `subject`, or finds it there: its id.
    pub async fn register(&self, subject: &str, schema: &str) -> Result<u32, RegistryError> {
        const OP: &str = "register";
        self.observe(OP, async {
            post_schema(&self.settings, subject.to_owned(), supplied(schema))
                .await
                .map(|registered| registered.id)
                .map_err(|e| classify(OP, &e).into_error(subject))
        })
        .await
    }

    /// The id of `schema` if it is registered under `subject`; never registers it.
    pub async fn lookup(&self, subject: &str, schema: &str) -> Result<u32, RegistryError> {
        const OP: &str = "lookup";
        let body = serde_json::json!({"schema": schema, "schemaType": "AVRO"}).to_string();
        self.observe(OP, async {
            let raw = perform_sr_call(&self.settings, SrCall::PostForVersion(subject, &body))
                .await
                .map_err(|e| classify(OP, &e).into_error(subject))?;
            raw.id.ok_or_else(|| RegistryError::Invalid {
                operation: OP,
                reason: format!("the lookup under {subject} answered no id"),
            })
        })
        .await
    }

    /// The id of the latest version registered under `subject`.
    pub async fn latest_id(&self, subject: &str) -> Result<u32, RegistryError> {
        const OP: &str = "latest";
        self.observe(OP, async {
            get_schema_by_subject_and_version(&self.settings, subject, None)
                .await
                .map(|registered| registered.id)
                .map_err(|e| classify(OP, &e).into_error(subject))
        })
        .await
    }

    /// Whether `schema` may be registered under `subject` by the subject's compatibility
    /// level (checked by the registry against the versions that level names).
    pub async fn is_compatible(&self, subject: &str, schema: &str) -> Result<bool, RegistryError> {
        const OP: &str = "compatibility";
        self.observe(OP, async {
            is_compatible_schema(&self.settings, subject.to_owned(), supplied(schema))
                .await
                .map_err(|e| classify(OP, &e).into_error(subject))
        })
        .await
    }

    async fn observe<T>(
        &self,
        operation: &'static str,
        call: impl Future<Output = Result<T, RegistryError>>,
    ) -> Result<T, RegistryError> {
        let started = Instant::now();
        let outcome = call.await;
        self.metrics
            .registry_request_duration
            .with_label_values(&[operation])
            .observe(started.elapsed().as_secs_f64());
        if let Err(e) = &outcome {
            self.failed(operation, e.class());
        }
        outcome
    }

    fn failed(&self, operation: &'static str, class: &'static str) {
        self.metrics
            .registry_request_failures
            .with_label_values(&[operation, class])
            .inc();
    }
}

fn supplied(schema: &str) -> SuppliedSchema {
    SuppliedSchema::new(None, SchemaType::Avro, schema.to_owned())
}

fn read(path: &std::path::Path, key: &str) -> Result<Vec<u8>, RegistryError> {
    std::fs::read(path).map_err(|e| RegistryError::Setup(format!("{key} {}: {e}", path.display())))
}

/// How a failed registry call is to be treated.
#[derive(Debug, Clone, PartialEq)]
enum Failure {
    /// HTTP 404 (unknown id, subject or version).
    NotFound {
        operation: &'static str,
        reason: String,
    },
    Registry(RegistryError),
}

impl Failure {
    /// For calls where a 404 names a missing subject or version: the registry refuses.
    fn into_error(self, subject: &str) -> RegistryError {
        match self {
            Failure::Registry(e) => e,
            Failure::NotFound { operation, reason } => RegistryError::Refused {
                operation,
                status: 404,
                reason: format!("{subject}: {reason}"),
            },
        }
    }
}

/// Sorts a `schema_registry_converter` error by HTTP status (the crate deems 500, 504 and
/// 429 permanent; they are not) or by transport failure.
fn classify(operation: &'static str, e: &SRCError) -> Failure {
    let reason = describe(e);
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(http) = s.downcast_ref::<reqwest::Error>() {
            return Failure::Registry(RegistryError::Unavailable {
                operation,
                reason: transport_reason(http),
            });
        }
        source = s.source();
    }
    match http_status(e) {
        Some(404) => Failure::NotFound { operation, reason },
        Some(status) if status == 408 || status == 429 || status >= 500 => {
            Failure::Registry(RegistryError::Unavailable { operation, reason })
        }
        Some(status) => Failure::Registry(RegistryError::Refused {
            operation,
            status,
            reason,
        }),
        None if e.retriable => Failure::Registry(RegistryError::Unavailable { operation, reason }),
        None => Failure::Registry(RegistryError::Invalid { operation, reason }),
    }
}

/// The HTTP status of a registry error answer: from the body's `error_code` (Confluent codes
/// are the status, or the status followed by two digits: 40403), else from the crate's message
/// (a body that is no registry error, e.g. a proxy's page).
fn http_status(e: &SRCError) -> Option<u16> {
    let from_code = std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<RawError>())
        .map(|raw| {
            if raw.error_code >= 10_000 {
                raw.error_code / 100
            } else {
                raw.error_code
            }
        })
        .filter(|code| (100..600).contains(code));
    let from_message = || {
        let (_, rest) = e.error.split_once("with status ")?;
        rest.get(..3)?.parse::<u32>().ok()
    };
    from_code
        .or_else(from_message)
        .and_then(|s| u16::try_from(s).ok())
}

/// A registry error's own message when it sent one, else the crate's description.
fn describe(e: &SRCError) -> String {
    if let Some(raw) = std::error::Error::source(e).and_then(|s| s.downcast_ref::<RawError>()) {
        if raw.error_code != 0 {
            return format!("{} (error code {})", raw.message, raw.error_code);
        }
    }
    match &e.cause {
        Some(cause) => format!("{}: {cause}", e.error),
        None => e.error.clone(),
    }
}

/// The innermost cause of a transport error (e.g. "Connection refused (os error 111)"),
/// without the request URL reqwest puts in its own message.
fn transport_reason(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "the request timed out".into();
    }
    let mut innermost: Option<&(dyn std::error::Error + 'static)> = None;
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        innermost = Some(s);
        source = s.source();
    }
    match innermost {
        Some(cause) if e.is_connect() => format!("cannot connect: {cause}"),
        Some(cause) => cause.to_string(),
        None if e.is_connect() => "cannot connect".into(),
        None => "the request failed".into(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn http_error(code: u32, status: &str) -> SRCError {
        SRCError::non_retryable_with_cause(
            serde_json::from_value::<RawError>(
                serde_json::json!({"error_code": code, "message": "m"}),
            )
            .unwrap(),
            &format!("HTTP request to schema registry failed with status {status}"),
        )
    }

    #[test]
    fn subjects_are_named_by_topic_or_by_record() {
        assert_eq!(
            subject_name(
                SubjectNameStrategy::TopicName,
                "captain.run-results",
                "dev.x.R"
            ),
            "captain.run-results-value"
        );
        assert_eq!(
            subject_name(
                SubjectNameStrategy::RecordName,
                "captain.run-results",
                "dev.x.R"
            ),
            "dev.x.R"
        );
    }

    #[test]
    fn statuses_from_error_codes_or_messages_decide_retry_or_refusal() {
        let op = "register";
        assert_eq!(
            classify(op, &http_error(40403, "404 Not Found")),
            Failure::NotFound {
                operation: op,
                reason: "m (error code 40403)".into()
            }
        );
        for (code, status) in [
            (50001, "500 Internal Server Error"),
            (0, "504 Gateway Timeout"),
            (0, "429 Too Many Requests"),
        ] {
            let f = classify(op, &http_error(code, status));
            assert!(
                matches!(f, Failure::Registry(RegistryError::Unavailable { .. })),
                "{status}: {f:?}"
            );
        }
        for (code, status, expected) in [
            (409, "409 Conflict", 409),
            (0, "401 Unauthorized", 401),
            (42201, "422 Unprocessable Entity", 422),
        ] {
            let f = classify(op, &http_error(code, status));
            assert!(
                matches!(f, Failure::Registry(RegistryError::Refused { status, .. }) if status == expected),
                "{status}: {f:?}"
            );
        }
    }

    #[test]
    fn an_answer_of_the_wrong_kind_is_unusable_and_not_retried() {
        let e = SRCError::non_retryable_without_cause("type Protobuf, is not correct");
        let f = classify("schema_by_id", &e);
        assert!(
            matches!(f, Failure::Registry(RegistryError::Invalid { .. })),
            "{f:?}"
        );
    }

    #[test]
    fn debug_output_shows_no_credentials() {
        let config = SchemaRegistrySettings {
            url: "http://user:pw@127.0.0.1:1".into(),
            username: Some("user".into()),
            ..SchemaRegistrySettings::default()
        };
        let secrets = RegistrySecrets {
            password: Some("s3cret".to_owned().into()),
            token: None,
        };
        let client = SchemaRegistryClient::new(&config, &secrets, Metrics::new().unwrap()).unwrap();
        let shown = format!("{client:?}");
        assert!(
            !shown.contains("s3cret") && !shown.contains("pw"),
            "{shown}"
        );
    }

    #[test]
    fn an_unreadable_ca_file_is_a_setup_error_naming_the_key() {
        let config = SchemaRegistrySettings {
            url: "https://127.0.0.1:1".into(),
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..SchemaRegistrySettings::default()
        };
        let err = SchemaRegistryClient::new(
            &config,
            &RegistrySecrets::default(),
            Metrics::new().unwrap(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("schema_registry.ca_file"), "{err}");
    }
}
