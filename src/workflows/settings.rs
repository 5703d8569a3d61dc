//! The `[v3]` section: where the v3 API is, which project and key, how webhooks are
//! authenticated, and the limits of a v3 job (inputs per job, result pages). Its secrets (the
//! v3 API key, the accepted webhook secrets) come from the environment or from files, like
//! the v4 key, and never print.

use crate::captain::v3::V3_DEFAULT_BASE_URL;
use crate::captain::LimiterConfig;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The v3 API key.
pub const ENV_V3_API_KEY: &str = "CAPTAIN_BRIDGE_V3_API_KEY";
/// The secrets accepted in the webhook header, comma-separated (several during a rotation).
pub const ENV_V3_WEBHOOK_SECRETS: &str = "CAPTAIN_BRIDGE_V3_WEBHOOK_SECRETS";
/// Environment variables that hold v3 secrets (not settings overrides).
pub const SECRET_ENVS: [&str; 2] = [ENV_V3_API_KEY, ENV_V3_WEBHOOK_SECRETS];
/// Keys that must never be set in the config file.
pub const SECRET_KEYS: [&str; 2] = ["v3.api_key", "v3.webhook_secrets"];
/// Shortest accepted webhook secret.
pub const MIN_WEBHOOK_SECRET_LEN: usize = 16;

/// The `[v3]` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct V3Settings {
    /// Serve `mode: "workflow"` requests and `POST /webhooks/v3`. Off: workflow requests end
    /// `SUBMIT_FAILED` (label `V3_NOT_CONFIGURED`) and the endpoint answers 404.
    pub enabled: bool,
    /// The v3 API root including the version.
    pub base_url: String,
    /// The workspace (project) uid, sent as `x-project-id`; webhooks of other projects are
    /// refused.
    pub project_uid: String,
    /// File holding the v3 API key (alternative to `CAPTAIN_BRIDGE_V3_API_KEY`).
    pub api_key_file: Option<PathBuf>,
    /// The custom header configured on the workflow's webhook in the Captain Data app.
    pub webhook_header_name: String,
    /// File holding the accepted webhook secrets, comma- or newline-separated (alternative to
    /// `CAPTAIN_BRIDGE_V3_WEBHOOK_SECRETS`). Several are accepted during a rotation.
    pub webhook_secrets_file: Option<PathBuf>,
    /// Largest webhook body accepted.
    pub max_webhook_bytes: usize,
    /// Inputs per v3 job: a request with more becomes several jobs (chunks).
    pub max_inputs: usize,
    /// Longest job name the v3 API takes (the bridge's routing token is part of it).
    pub max_job_name_len: usize,
    /// Rows asked per results page (`page_size`).
    pub results_page_size: u32,
    /// Result pages one job may have before its fetch is refused as runaway.
    pub max_result_pages: u32,
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// The v3 key's own rate limiter (metrics label `key = key_name`).
    pub rate_limit: LimiterConfig,
    /// Secrets, from the environment or the `*_file` keys.
    #[serde(skip)]
    pub secrets: V3Secrets,
}

impl Default for V3Settings {
    fn default() -> Self {
        Self {
            enabled: false,
            base_url: V3_DEFAULT_BASE_URL.into(),
            project_uid: String::new(),
            api_key_file: None,
            webhook_header_name: "x-captain-bridge-secret".into(),
            webhook_secrets_file: None,
            max_webhook_bytes: 64 * 1024,
            max_inputs: 10_000,
            max_job_name_len: 255,
            results_page_size: 100,
            max_result_pages: 1_000,
            request_timeout: Duration::from_secs(30),
            rate_limit: LimiterConfig {
                key_name: "v3".into(),
                ..LimiterConfig::default()
            },
            secrets: V3Secrets::default(),
        }
    }
}

/// The v3 secrets; never printed.
#[derive(Clone, Default)]
pub struct V3Secrets {
    pub api_key: Option<SecretString>,
    /// Every secret accepted in the webhook header.
    pub webhook_secrets: Vec<SecretString>,
}

impl std::fmt::Debug for V3Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("V3Secrets")
            .field("api_key", &self.api_key.as_ref().map(|_| "[set]"))
            .field("webhook_secrets", &self.webhook_secrets.len())
            .finish()
    }
}

/// A v3 setting out of range, naming the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct V3SettingsError {
    pub key: String,
    pub message: String,
}

fn invalid(key: &str, message: impl Into<String>) -> V3SettingsError {
    V3SettingsError {
        key: key.to_owned(),
        message: message.into(),
    }
}

impl V3Settings {
    /// Reads the secrets from `env` (name → value) or the configured files.
    pub fn load_secrets(
        &mut self,
        env: &impl Fn(&str) -> Option<String>,
    ) -> Result<(), V3SettingsError> {
        let read = |var: &str, file: Option<&Path>, key: &str| match env(var) {
            Some(value) => Ok(Some(value)),
            None => match file {
                None => Ok(None),
                Some(path) => std::fs::read_to_string(path)
                    .map(Some)
                    .map_err(|e| invalid(key, format!("cannot read {}: {e}", path.display()))),
            },
        };
        self.secrets.api_key = read(
            ENV_V3_API_KEY,
            self.api_key_file.as_deref(),
            "v3.api_key_file",
        )?
        .map(|k| SecretString::from(k.trim().to_owned()));
        self.secrets.webhook_secrets = read(
            ENV_V3_WEBHOOK_SECRETS,
            self.webhook_secrets_file.as_deref(),
            "v3.webhook_secrets_file",
        )?
        .map(|text| {
            text.split([',', '\n'])
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| SecretString::from(s.to_owned()))
                .collect()
        })
        .unwrap_or_default();
        Ok(())
    }

    /// Checks the section; only when enabled are the project, key and secrets required.
    pub fn validate(&self) -> Result<(), V3SettingsError> {
        if !self.enabled {
            return Ok(());
        }
        let url = reqwest::Url::parse(&self.base_url)
            .map_err(|e| invalid("v3.base_url", format!("{:?}: {e}", self.base_url)))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(invalid("v3.base_url", "must be an http(s) URL"));
        }
        let id_ok = !self.project_uid.is_empty()
            && self
                .project_uid
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !id_ok {
            return Err(invalid(
                "v3.project_uid",
                "must be the workspace (project) uid, [A-Za-z0-9-]",
            ));
        }
        if self
            .secrets
            .api_key
            .as_ref()
            .is_none_or(|k| k.expose_secret().is_empty())
        {
            return Err(invalid(
                "v3.api_key",
                format!("no v3 API key: set {ENV_V3_API_KEY} or v3.api_key_file"),
            ));
        }
        if axum::http::HeaderName::from_bytes(self.webhook_header_name.as_bytes()).is_err() {
            return Err(invalid("v3.webhook_header_name", "is not a header name"));
        }
        if self.secrets.webhook_secrets.is_empty() {
            return Err(invalid(
                "v3.webhook_secrets",
                format!(
                    "no webhook secret: set {ENV_V3_WEBHOOK_SECRETS} or v3.webhook_secrets_file \
                     (the value of the webhook header configured in the Captain Data app)"
                ),
            ));
        }
        if let Some(i) = self.secrets.webhook_secrets.iter().position(|s| {
            s.expose_secret().len() < MIN_WEBHOOK_SECRET_LEN
                || axum::http::HeaderValue::from_str(s.expose_secret()).is_err()
        }) {
            return Err(invalid(
                "v3.webhook_secrets",
                format!(
                    "secret {i} must be at least {MIN_WEBHOOK_SECRET_LEN} characters valid in a header"
                ),
            ));
        }
        if self.max_webhook_bytes < 1024 {
            return Err(invalid("v3.max_webhook_bytes", "must be at least 1024"));
        }
        if self.max_inputs == 0 {
            return Err(invalid("v3.max_inputs", "must be at least 1"));
        }
        if self.max_job_name_len < 200 {
            return Err(invalid(
                "v3.max_job_name_len",
                "must be at least 200: the job name carries the bridge's routing token",
            ));
        }
        if self.results_page_size == 0 {
            return Err(invalid("v3.results_page_size", "must be at least 1"));
        }
        if self.max_result_pages == 0 {
            return Err(invalid("v3.max_result_pages", "must be at least 1"));
        }
        if self.request_timeout.is_zero() {
            return Err(invalid("v3.request_timeout", "must be above 0s"));
        }
        self.rate_limit
            .validate()
            .map_err(|e| invalid(&format!("v3.rate_limit.{}", e.field), e.reason))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn enabled(env: &[(&str, &str)]) -> Result<V3Settings, V3SettingsError> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let mut s = V3Settings {
            enabled: true,
            project_uid: "proj-1".into(),
            ..V3Settings::default()
        };
        s.load_secrets(&|name| env.get(name).cloned())?;
        s.validate().map(|()| s)
    }

    #[test]
    fn a_disabled_section_needs_nothing() {
        V3Settings::default().validate().unwrap();
    }

    #[test]
    fn an_enabled_section_names_each_missing_or_bad_setting() {
        let secret = "0123456789abcdef-secret";
        let cases: [(&[(&str, &str)], &str); 3] = [
            (&[(ENV_V3_WEBHOOK_SECRETS, secret)], "v3.api_key"),
            (&[(ENV_V3_API_KEY, "k")], "v3.webhook_secrets"),
            (
                &[(ENV_V3_API_KEY, "k"), (ENV_V3_WEBHOOK_SECRETS, "short")],
                "v3.webhook_secrets",
            ),
        ];
        for (env, key) in cases {
            assert_eq!(enabled(env).unwrap_err().key, key);
        }
    }

    #[test]
    fn several_webhook_secrets_are_accepted_for_a_rotation_and_never_printed() {
        let s = enabled(&[
            (ENV_V3_API_KEY, "the-v3-key"),
            (
                ENV_V3_WEBHOOK_SECRETS,
                "new-secret-0123456789, old-secret-0123456789",
            ),
        ])
        .unwrap();
        assert_eq!(s.secrets.webhook_secrets.len(), 2);
        let shown = format!("{s:?}");
        assert!(!shown.contains("the-v3-key") && !shown.contains("old-secret"));
    }

    #[test]
    fn the_bridge_loads_the_v3_section_and_its_secrets_from_the_environment() {
        use crate::config::{ConfigError, Settings};
        let env = |extra: &[(&str, &str)]| {
            let mut env: Vec<(String, String)> = [
                ("CAPTAIN_BRIDGE_API_KEY", "v4-key"),
                (
                    "CAPTAIN_BRIDGE_CALLBACK_KEYS",
                    "k1:MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3",
                ),
                ("CAPTAIN_BRIDGE_CALLBACKS__SIGNING_KEY_ID", "k1"),
                ("CAPTAIN_BRIDGE_V3__ENABLED", "true"),
                ("CAPTAIN_BRIDGE_V3__PROJECT_UID", "proj-1"),
            ]
            .iter()
            .chain(extra)
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
            env.sort();
            env
        };
        match Settings::load_from(None, env(&[])) {
            Err(ConfigError::Invalid { key, message }) => {
                assert_eq!(key, "v3.api_key");
                assert!(message.contains(ENV_V3_API_KEY), "{message}");
            }
            other => panic!("{other:?}"),
        }
        let loaded = Settings::load_from(
            None,
            env(&[
                (ENV_V3_API_KEY, "v3-key"),
                (
                    ENV_V3_WEBHOOK_SECRETS,
                    "0123456789abcdef-a,0123456789abcdef-b",
                ),
            ]),
        )
        .unwrap();
        assert!(loaded.v3.enabled);
        assert_eq!(loaded.v3.project_uid, "proj-1");
        assert_eq!(
            loaded
                .v3
                .secrets
                .api_key
                .as_ref()
                .map(|k| k.expose_secret().to_owned()),
            Some("v3-key".to_owned())
        );
        assert_eq!(loaded.v3.secrets.webhook_secrets.len(), 2);
    }
}
