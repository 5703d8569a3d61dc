//! Configuration of the Avro codec: the `[schema_registry]` section, the output format of each
//! output topic, and the registry's credentials (from the environment or files, never from the
//! config file, never logged). Self-contained so that `config::Settings` embeds it with two
//! fields: `schema_registry: SchemaRegistrySettings` and `kafka.formats: OutputFormats`.

use crate::config::ConfigError;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Basic-auth password of the registry (with `schema_registry.username`).
pub const ENV_REGISTRY_PASSWORD: &str = "CAPTAIN_BRIDGE_SCHEMA_REGISTRY_PASSWORD";
/// Bearer token of the registry.
pub const ENV_REGISTRY_TOKEN: &str = "CAPTAIN_BRIDGE_SCHEMA_REGISTRY_TOKEN";
/// The secret environment variables above: the config loader must keep them out of its
/// `CAPTAIN_BRIDGE_<SECTION>__<KEY>` overrides.
pub const SECRET_ENVS: [&str; 2] = [ENV_REGISTRY_PASSWORD, ENV_REGISTRY_TOKEN];
/// Keys that would hold a secret in the config file, refused there.
pub const SECRET_KEYS: [&str; 2] = ["schema_registry.password", "schema_registry.token"];

/// How a record's value is written on an output topic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// UTF-8 JSON with the contract's field names (the default).
    #[default]
    Json,
    /// Confluent wire format: magic byte 0, 4-byte big-endian schema id, Avro binary.
    Avro,
}

/// `[kafka.formats]`: the format of each output topic. Input topics need no setting: a record
/// starting with the magic byte 0 is Avro, anything else JSON. The dead-letter topic keeps the
/// original bytes and the internal `runs` topic stays JSON.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutputFormats {
    pub run_status: Format,
    pub run_results: Format,
}

impl OutputFormats {
    pub fn any_avro(&self) -> bool {
        self.run_status == Format::Avro || self.run_results == Format::Avro
    }
}

/// How the subject a schema is registered under is named.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubjectNameStrategy {
    /// `<topic>-value` (Confluent's default `TopicNameStrategy`): one record type per topic.
    #[default]
    TopicName,
    /// The record's full name, e.g. `dev.captainbridge.RunResult` (`RecordNameStrategy`):
    /// one subject per record type, whatever the topic.
    RecordName,
}

/// `[schema_registry]`.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SchemaRegistrySettings {
    /// Base URL of the Confluent-compatible API, e.g. `https://registry:8081` or Apicurio's
    /// `http://host:8080/apis/ccompat/v7`; several comma-separated URLs are tried in order.
    /// Empty: no registry (every output topic must then be JSON; an Avro input record is
    /// dead-lettered as `no_schema_registry`).
    pub url: String,
    pub subject_name_strategy: SubjectNameStrategy,
    /// Register the bridge's schema under its subject at first use (the registry answers the
    /// existing id when it is already there). Off: the schema must already be registered
    /// (looked up, never created).
    pub auto_register: bool,
    /// Write with the latest schema registered under the subject instead of the bridge's own
    /// (values are resolved to it); needs `auto_register = false`.
    pub use_latest_version: bool,
    /// How long the latest version is used before it is asked for again.
    #[serde(with = "humantime_serde")]
    pub latest_cache_ttl: Duration,
    /// Timeout of one registry request (connect included).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Basic-auth user (for Confluent Cloud: the API key); its password is a secret.
    pub username: Option<String>,
    /// File holding the basic-auth password (alternative to the environment variable).
    pub password_file: Option<PathBuf>,
    /// File holding a bearer token (alternative to the environment variable).
    pub token_file: Option<PathBuf>,
    /// PEM file of the CA certificate(s) to trust for `https` URLs instead of the system's.
    pub ca_file: Option<PathBuf>,
    /// PEM file with a client certificate and its private key, for mutual TLS.
    pub identity_file: Option<PathBuf>,
}

impl Default for SchemaRegistrySettings {
    fn default() -> Self {
        Self {
            url: String::new(),
            subject_name_strategy: SubjectNameStrategy::TopicName,
            auto_register: true,
            use_latest_version: false,
            latest_cache_ttl: Duration::from_secs(300),
            request_timeout: Duration::from_secs(10),
            username: None,
            password_file: None,
            token_file: None,
            ca_file: None,
            identity_file: None,
        }
    }
}

impl std::fmt::Debug for SchemaRegistrySettings {
    /// The URL may carry `user:password@`: it is shown without it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchemaRegistrySettings")
            .field(
                "urls",
                &self
                    .urls()
                    .iter()
                    .map(|u| redact_url(u))
                    .collect::<Vec<_>>(),
            )
            .field("subject_name_strategy", &self.subject_name_strategy)
            .field("auto_register", &self.auto_register)
            .field("use_latest_version", &self.use_latest_version)
            .field("latest_cache_ttl", &self.latest_cache_ttl)
            .field("request_timeout", &self.request_timeout)
            .field("username", &self.username)
            .field("password_file", &self.password_file)
            .field("token_file", &self.token_file)
            .field("ca_file", &self.ca_file)
            .field("identity_file", &self.identity_file)
            .finish()
    }
}

impl SchemaRegistrySettings {
    /// The configured URLs, trimmed, without a trailing `/`.
    pub fn urls(&self) -> Vec<String> {
        self.url
            .split(',')
            .map(|u| u.trim().trim_end_matches('/').to_owned())
            .filter(|u| !u.is_empty())
            .collect()
    }

    pub fn enabled(&self) -> bool {
        !self.urls().is_empty()
    }

    /// Checks what types alone cannot, naming the key at fault. `formats` is where Avro is
    /// asked for, which needs a registry.
    pub fn validate(&self, formats: &OutputFormats) -> Result<(), ConfigError> {
        for (key, format) in [
            ("kafka.formats.run_status", formats.run_status),
            ("kafka.formats.run_results", formats.run_results),
        ] {
            if format == Format::Avro && !self.enabled() {
                return Err(invalid(
                    "schema_registry.url",
                    format!("{key} = \"avro\" needs a schema registry"),
                ));
            }
        }
        for url in self.urls() {
            let rest = url
                .strip_prefix("https://")
                .or_else(|| url.strip_prefix("http://"))
                .ok_or_else(|| {
                    invalid(
                        "schema_registry.url",
                        format!("{:?} is not an http(s) URL", redact_url(&url)),
                    )
                })?;
            if rest.is_empty() || rest.starts_with('/') || rest.contains(char::is_whitespace) {
                return Err(invalid(
                    "schema_registry.url",
                    format!("{:?} has no host", redact_url(&url)),
                ));
            }
        }
        if self.use_latest_version && self.auto_register {
            return Err(invalid(
                "schema_registry.use_latest_version",
                "writing with the latest registered version needs auto_register = false",
            ));
        }
        if self.latest_cache_ttl < Duration::from_secs(1) {
            // Below that, every record would ask the registry.
            return Err(invalid(
                "schema_registry.latest_cache_ttl",
                "must be at least 1s",
            ));
        }
        if self.request_timeout.is_zero() {
            return Err(invalid(
                "schema_registry.request_timeout",
                "must be above 0",
            ));
        }
        if self.password_file.is_some() && self.username.is_none() {
            return Err(invalid(
                "schema_registry.password_file",
                "a password needs schema_registry.username",
            ));
        }
        Ok(())
    }
}

/// The registry's credentials.
#[derive(Clone, Default)]
pub struct RegistrySecrets {
    pub password: Option<SecretString>,
    pub token: Option<SecretString>,
}

impl std::fmt::Debug for RegistrySecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = |s: &Option<SecretString>| if s.is_some() { "[set]" } else { "[unset]" };
        f.debug_struct("RegistrySecrets")
            .field("password", &shown(&self.password))
            .field("token", &shown(&self.token))
            .finish()
    }
}

impl RegistrySecrets {
    /// Reads each secret from its environment variable, else from the file named in the
    /// settings, and checks that they fit the settings.
    pub fn load(
        settings: &SchemaRegistrySettings,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let secrets = Self {
            password: secret(
                &env,
                ENV_REGISTRY_PASSWORD,
                settings.password_file.as_deref(),
                "schema_registry.password_file",
            )?,
            token: secret(
                &env,
                ENV_REGISTRY_TOKEN,
                settings.token_file.as_deref(),
                "schema_registry.token_file",
            )?,
        };
        if secrets.password.is_some() && secrets.token.is_some() {
            return Err(invalid(
                "schema_registry.token",
                "set a basic-auth password or a bearer token, not both",
            ));
        }
        if secrets.password.is_some() && settings.username.is_none() {
            return Err(invalid(
                "schema_registry.username",
                format!("{ENV_REGISTRY_PASSWORD} is set but no username is configured"),
            ));
        }
        if secrets
            .password
            .as_ref()
            .or(secrets.token.as_ref())
            .is_some_and(|s| s.expose_secret().is_empty())
        {
            return Err(invalid(
                "schema_registry.credentials",
                "the registry password or token is empty",
            ));
        }
        Ok(secrets)
    }
}

fn secret(
    env: &impl Fn(&str) -> Option<String>,
    var: &str,
    file: Option<&Path>,
    file_key: &str,
) -> Result<Option<SecretString>, ConfigError> {
    if let Some(value) = env(var) {
        return Ok(Some(SecretString::from(value.trim().to_owned())));
    }
    match file {
        None => Ok(None),
        Some(path) => std::fs::read_to_string(path)
            .map(|s| Some(SecretString::from(s.trim().to_owned())))
            .map_err(|e| invalid(file_key, format!("cannot read {}: {e}", path.display()))),
    }
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        message: message.into(),
    }
}

/// The URL without `user:password@`, for messages and logs.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let host_start = rest.find('/').unwrap_or(rest.len());
    match rest[..host_start].rfind('@') {
        Some(at) => format!("{scheme}://[redacted]@{}", &rest[at + 1..]),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    fn with_url(url: &str) -> SchemaRegistrySettings {
        SchemaRegistrySettings {
            url: url.into(),
            ..SchemaRegistrySettings::default()
        }
    }

    #[test]
    fn json_everywhere_needs_no_registry() {
        SchemaRegistrySettings::default()
            .validate(&OutputFormats::default())
            .unwrap();
    }

    #[test]
    fn an_avro_topic_without_a_registry_names_both_keys() {
        let formats = OutputFormats {
            run_results: Format::Avro,
            ..OutputFormats::default()
        };
        let err = SchemaRegistrySettings::default()
            .validate(&formats)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("schema_registry.url:"), "{err}");
        assert!(err.contains("kafka.formats.run_results"), "{err}");
    }

    #[test]
    fn formats_and_strategies_read_as_documented() {
        let f: OutputFormats =
            toml::from_str("run_status = \"avro\"\nrun_results = \"json\"").unwrap();
        assert_eq!(f.run_status, Format::Avro);
        let s: SchemaRegistrySettings = toml::from_str(
            "url = \"http://r:8081\"\nsubject_name_strategy = \"record_name\"\nrequest_timeout = \"3s\"",
        )
        .unwrap();
        assert_eq!(s.subject_name_strategy, SubjectNameStrategy::RecordName);
        assert_eq!(s.request_timeout, Duration::from_secs(3));
        assert!(toml::from_str::<SchemaRegistrySettings>("password = \"x\"").is_err());
    }

    #[test]
    fn several_urls_are_split_and_each_must_be_http() {
        let s = with_url("http://a:8081/, https://b:8081/apis/ccompat/v7");
        assert_eq!(
            s.urls(),
            ["http://a:8081", "https://b:8081/apis/ccompat/v7"]
        );
        s.validate(&OutputFormats::default()).unwrap();
        let err = with_url("http://a:1,b:2")
            .validate(&OutputFormats::default())
            .unwrap_err();
        assert!(err.to_string().contains("\"b:2\""), "{err}");
    }

    #[test]
    fn latest_version_with_auto_register_is_refused() {
        let s = SchemaRegistrySettings {
            use_latest_version: true,
            ..with_url("http://r:1")
        };
        let err = s.validate(&OutputFormats::default()).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("schema_registry.use_latest_version:"),
            "{err}"
        );
    }

    #[test]
    fn credentials_come_from_the_environment_or_files_and_never_print() {
        let s = SchemaRegistrySettings {
            username: Some("key".into()),
            ..with_url("http://r:1")
        };
        let secrets =
            RegistrySecrets::load(&s, env(&[(ENV_REGISTRY_PASSWORD, "hunter2\n")])).unwrap();
        assert_eq!(
            secrets.password.as_ref().unwrap().expose_secret(),
            "hunter2"
        );
        assert!(!format!("{secrets:?}").contains("hunter2"));

        let path = std::env::temp_dir().join(format!("registry-token-{}", uuid::Uuid::new_v4()));
        std::fs::write(&path, "tok\n").unwrap();
        let s = SchemaRegistrySettings {
            token_file: Some(path.clone()),
            ..with_url("http://r:1")
        };
        let secrets = RegistrySecrets::load(&s, env(&[])).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(secrets.token.unwrap().expose_secret(), "tok");
    }

    #[test]
    fn a_password_without_a_username_or_beside_a_token_is_refused() {
        let err = RegistrySecrets::load(
            &with_url("http://r:1"),
            env(&[(ENV_REGISTRY_PASSWORD, "p")]),
        )
        .unwrap_err();
        assert!(
            err.to_string().starts_with("schema_registry.username:"),
            "{err}"
        );
        let s = SchemaRegistrySettings {
            username: Some("u".into()),
            ..with_url("http://r:1")
        };
        let err = RegistrySecrets::load(
            &s,
            env(&[(ENV_REGISTRY_PASSWORD, "p"), (ENV_REGISTRY_TOKEN, "t")]),
        )
        .unwrap_err();
        assert!(
            err.to_string().starts_with("schema_registry.token:"),
            "{err}"
        );
        let missing = SchemaRegistrySettings {
            token_file: Some("/nonexistent/token".into()),
            ..with_url("http://r:1")
        };
        let err = RegistrySecrets::load(&missing, env(&[])).unwrap_err();
        assert!(
            err.to_string().starts_with("schema_registry.token_file:"),
            "{err}"
        );
    }

    #[test]
    fn the_registry_secrets_are_not_read_as_config_overrides() {
        // They share the CAPTAIN_BRIDGE_ prefix: the config loader must leave them alone.
        let loaded = crate::config::Settings::load_from(
            None,
            [
                (crate::config::ENV_API_KEY, "key"),
                (
                    crate::config::ENV_CALLBACK_KEYS,
                    "k1:c2VjcmV0LXNlY3JldC1zZWNyZXQ=",
                ),
                (ENV_REGISTRY_TOKEN, "tok"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned())),
        );
        loaded.unwrap();
    }

    #[test]
    fn credentials_in_a_url_are_redacted_in_debug_output() {
        let s = with_url("https://user:pw@registry:8081/x");
        let shown = format!("{s:?}");
        assert!(!shown.contains("pw"), "{shown}");
        assert!(
            shown.contains("https://[redacted]@registry:8081/x"),
            "{shown}"
        );
    }
}
