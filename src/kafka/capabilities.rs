//! What this build of librdkafka can serve (compression codecs, security protocols, SASL
//! mechanisms, OIDC), read from its own `builtin.features`, and the check of a client property
//! map (`kafka.properties`) against it: `check-config` refuses, naming the key and the value,
//! what `run` could not do, instead of the client failing at start-up or, for a codec, a
//! partition stalling on the first batch it cannot decompress.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;

use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::BaseProducer;

/// A compression codec of Kafka record batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Codec {
    /// `gzip` (zlib).
    Gzip,
    /// `snappy`.
    Snappy,
    /// `lz4`.
    Lz4,
    /// `zstd`.
    Zstd,
}

impl Codec {
    /// Every codec a Kafka broker may hand a consumer.
    pub const ALL: [Codec; 4] = [Codec::Gzip, Codec::Snappy, Codec::Lz4, Codec::Zstd];

    /// The name in `compression.type` and in `builtin.features`.
    pub fn name(self) -> &'static str {
        match self {
            Codec::Gzip => "gzip",
            Codec::Snappy => "snappy",
            Codec::Lz4 => "lz4",
            Codec::Zstd => "zstd",
        }
    }
}

/// A value of `security.protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SecurityProtocol {
    /// No TLS, no authentication.
    Plaintext,
    /// TLS (with a client certificate: mTLS).
    Ssl,
    /// SASL without TLS.
    SaslPlaintext,
    /// SASL over TLS.
    SaslSsl,
}

impl SecurityProtocol {
    /// Every protocol librdkafka knows.
    pub const ALL: [SecurityProtocol; 4] = [
        SecurityProtocol::Plaintext,
        SecurityProtocol::Ssl,
        SecurityProtocol::SaslPlaintext,
        SecurityProtocol::SaslSsl,
    ];

    /// The configuration value, as Kafka documents it.
    pub fn name(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "PLAINTEXT",
            SecurityProtocol::Ssl => "SSL",
            SecurityProtocol::SaslPlaintext => "SASL_PLAINTEXT",
            SecurityProtocol::SaslSsl => "SASL_SSL",
        }
    }

    /// Parses a value the way librdkafka does (case-insensitively).
    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(value.trim()))
    }

    fn uses_tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }

    fn uses_sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }
}

/// A value of `sasl.mechanism`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SaslMechanism {
    /// Username and password in clear (over TLS: `SASL_SSL`).
    Plain,
    /// Salted challenge-response with SHA-256.
    ScramSha256,
    /// Salted challenge-response with SHA-512.
    ScramSha512,
    /// OAuth 2 bearer tokens (the bridge fetches them with OIDC client credentials).
    OAuthBearer,
    /// Kerberos.
    Gssapi,
}

impl SaslMechanism {
    /// Every mechanism librdkafka knows.
    pub const ALL: [SaslMechanism; 5] = [
        SaslMechanism::Plain,
        SaslMechanism::ScramSha256,
        SaslMechanism::ScramSha512,
        SaslMechanism::OAuthBearer,
        SaslMechanism::Gssapi,
    ];

    /// The configuration value; librdkafka compares it case-sensitively.
    pub fn name(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
            SaslMechanism::OAuthBearer => "OAUTHBEARER",
            SaslMechanism::Gssapi => "GSSAPI",
        }
    }

    /// The `builtin.features` entry that provides it.
    fn feature(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "sasl_plain",
            SaslMechanism::ScramSha256 | SaslMechanism::ScramSha512 => "sasl_scram",
            SaslMechanism::OAuthBearer => "sasl_oauthbearer",
            SaslMechanism::Gssapi => "sasl_gssapi",
        }
    }
}

/// Why this build's capabilities could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read librdkafka's builtin.features: {0}")]
pub struct CapabilitiesError(#[source] KafkaError);

/// One property this build cannot serve, or that would make a client fail or be ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PropertyError {
    /// The librdkafka property, as written in `kafka.properties`.
    pub key: String,
    /// Its value, `[redacted]` for secrets; empty when the problem is a missing property.
    pub value: String,
    /// What is wrong and what would work.
    pub reason: String,
}

impl fmt::Display for PropertyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.value.is_empty() {
            write!(f, "{}: {}", self.key, self.reason)
        } else {
            write!(f, "{}={}: {}", self.key, self.value, self.reason)
        }
    }
}

impl std::error::Error for PropertyError {}

/// What the linked librdkafka was built with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capabilities {
    version: String,
    features: BTreeSet<String>,
}

impl Capabilities {
    /// The capabilities of the librdkafka linked into this binary.
    pub fn of_this_build() -> Result<Self, CapabilitiesError> {
        let features = ClientConfig::new()
            .create_native_config()
            .and_then(|c| c.get("builtin.features"))
            .map_err(CapabilitiesError)?;
        let (_, version) = rdkafka::util::get_rdkafka_version();
        let mut caps = Self::from_features(&version, &features);
        // librdkafka's CMake build defines WITH_SASL_CYRUS as 0, and builtin.features tests it
        // with `defined()`: it lists sasl_gssapi although no GSSAPI provider is compiled in.
        // Only creating a client that asks for GSSAPI tells.
        if caps.has("sasl_gssapi") && !gssapi_provider_present() {
            caps.features.remove("sasl_gssapi");
        }
        Ok(caps)
    }

    /// Capabilities from a librdkafka version and a `builtin.features` value
    /// (`gzip,snappy,ssl,...`).
    pub fn from_features(version: &str, features: &str) -> Self {
        Self {
            version: version.to_owned(),
            features: features
                .split(',')
                .map(|f| f.trim().to_owned())
                .filter(|f| !f.is_empty())
                .collect(),
        }
    }

    /// librdkafka's version, e.g. `2.12.1`.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Every `builtin.features` entry, sorted.
    pub fn features(&self) -> impl Iterator<Item = &str> {
        self.features.iter().map(String::as_str)
    }

    /// Whether `builtin.features` lists `feature`.
    pub fn has(&self, feature: &str) -> bool {
        self.features.contains(feature)
    }

    /// Whether batches compressed with `codec` can be produced and consumed.
    pub fn supports_codec(&self, codec: Codec) -> bool {
        self.has(codec.name())
    }

    /// The codecs this build handles.
    pub fn codecs(&self) -> Vec<Codec> {
        Codec::ALL
            .into_iter()
            .filter(|c| self.supports_codec(*c))
            .collect()
    }

    /// Whether clients can use `protocol`.
    pub fn supports_protocol(&self, protocol: SecurityProtocol) -> bool {
        (!protocol.uses_tls() || self.has("ssl")) && (!protocol.uses_sasl() || self.has("sasl"))
    }

    /// The security protocols this build handles.
    pub fn security_protocols(&self) -> Vec<SecurityProtocol> {
        SecurityProtocol::ALL
            .into_iter()
            .filter(|p| self.supports_protocol(*p))
            .collect()
    }

    /// Whether clients can authenticate with `mechanism`.
    pub fn supports_mechanism(&self, mechanism: SaslMechanism) -> bool {
        self.has("sasl") && self.has(mechanism.feature())
    }

    /// The SASL mechanisms this build handles.
    pub fn sasl_mechanisms(&self) -> Vec<SaslMechanism> {
        SaslMechanism::ALL
            .into_iter()
            .filter(|m| self.supports_mechanism(*m))
            .collect()
    }

    /// Whether OAUTHBEARER tokens can be fetched from an OIDC token endpoint
    /// (`sasl.oauthbearer.method=oidc`).
    pub fn supports_oidc(&self) -> bool {
        self.has("oidc")
    }

    /// One line for the start-up log and `check-config`: version and what it serves.
    pub fn summary(&self) -> String {
        let names = |v: Vec<&str>| v.join(", ");
        format!(
            "librdkafka {}: codecs {}; security protocols {}; SASL mechanisms {}{}",
            self.version,
            names(self.codecs().into_iter().map(Codec::name).collect()),
            names(
                self.security_protocols()
                    .into_iter()
                    .map(SecurityProtocol::name)
                    .collect()
            ),
            names(
                self.sasl_mechanisms()
                    .into_iter()
                    .map(SaslMechanism::name)
                    .collect()
            ),
            if self.supports_oidc() {
                " (OAUTHBEARER with OIDC)"
            } else {
                ""
            },
        )
    }

    /// Checks librdkafka client properties against this build and against what librdkafka
    /// itself accepts; every problem found, in key order.
    ///
    /// Beyond librdkafka's own validation of each key and value (unknown key, bad value,
    /// "not available at build time"), it refuses what librdkafka only finds when a client
    /// starts, or never: a compression codec or SASL mechanism the build lacks (including the
    /// GSSAPI that `sasl.mechanism` defaults to), PLAIN/SCRAM without credentials, OAUTHBEARER
    /// without a token source, TLS or SASL settings that `security.protocol` would ignore, a
    /// certificate without its key, and files that do not exist.
    pub fn check(&self, properties: &BTreeMap<String, String>) -> Result<(), Vec<PropertyError>> {
        let mut errors = Vec::new();
        let protocol_entry = properties
            .get_key_value("security.protocol")
            .map(|(k, v)| (k.as_str(), v.as_str()));
        let protocol = match protocol_entry {
            None => Some(SecurityProtocol::Plaintext),
            Some((key, value)) => {
                let parsed = SecurityProtocol::parse(value);
                match parsed {
                    None => errors.push(err(
                        key,
                        value,
                        format!(
                            "unknown security protocol (known: {})",
                            SecurityProtocol::ALL.map(SecurityProtocol::name).join(", ")
                        ),
                    )),
                    Some(p) if !self.supports_protocol(p) => errors.push(err(
                        key,
                        value,
                        format!(
                            "this build has no TLS (OpenSSL): it serves {}",
                            self.security_protocols()
                                .into_iter()
                                .map(SecurityProtocol::name)
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    )),
                    Some(_) => {}
                }
                parsed
            }
        };
        self.check_sasl(properties, protocol, &mut errors);
        self.check_tls(properties, protocol, &mut errors);
        for key in ["compression.type", "compression.codec"] {
            if let Some(value) = properties.get(key) {
                self.check_codec(key, value, &mut errors);
            }
        }
        // librdkafka's own verdict on every key and value, unless one of the checks above
        // already explained that key better.
        for (key, value) in properties {
            if errors.iter().any(|e| &e.key == key) {
                continue;
            }
            if let Err(e) = ClientConfig::new().set(key, value).create_native_config() {
                let reason = match e {
                    KafkaError::ClientConfig(_, description, _, _) => description,
                    other => other.to_string(),
                };
                let reason = if is_secret(key) && !value.is_empty() {
                    reason.replace(value.as_str(), "[redacted]")
                } else {
                    reason
                };
                errors.push(err(key, value, format!("refused by librdkafka: {reason}")));
            }
        }
        for (key, value) in properties {
            let is_path = key.ends_with(".location") || key == "sasl.kerberos.keytab";
            // `probe` asks librdkafka to look in the usual system places.
            if is_path
                && !(key == "ssl.ca.location" && value == "probe")
                && !Path::new(value).exists()
            {
                errors.push(err(key, value, "no such file or directory".to_owned()));
            }
        }
        errors.sort_by(|a, b| a.key.cmp(&b.key));
        errors.dedup();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    fn check_codec(&self, key: &str, value: &str, errors: &mut Vec<PropertyError>) {
        let v = value.trim().to_ascii_lowercase();
        if v == "none" || v == "inherit" {
            return;
        }
        let served = || {
            let mut v: Vec<&str> = vec!["none"];
            v.extend(self.codecs().into_iter().map(Codec::name));
            v.join(", ")
        };
        match Codec::ALL.into_iter().find(|c| c.name() == v) {
            None => errors.push(err(
                key,
                value,
                format!("unknown compression codec (this build serves {})", served()),
            )),
            Some(c) if !self.supports_codec(c) => errors.push(err(
                key,
                value,
                format!(
                    "this build has no {} codec (it serves {})",
                    c.name(),
                    served()
                ),
            )),
            Some(_) => {}
        }
    }

    fn check_sasl(
        &self,
        properties: &BTreeMap<String, String>,
        protocol: Option<SecurityProtocol>,
        errors: &mut Vec<PropertyError>,
    ) {
        let mechanism_entry = ["sasl.mechanism", "sasl.mechanisms"]
            .into_iter()
            .find_map(|k| properties.get(k).map(|v| (k, v.as_str())));
        let uses_sasl = protocol.is_some_and(SecurityProtocol::uses_sasl);
        if !uses_sasl {
            // Without a SASL protocol librdkafka ignores every sasl.* setting: a forgotten
            // `security.protocol` would connect in clear to a listener that wants SASL.
            if protocol.is_some() {
                for (key, value) in properties.iter().filter(|(k, _)| k.starts_with("sasl.")) {
                    errors.push(err(
                        key,
                        value,
                        format!(
                            "ignored: security.protocol is {} (set SASL_SSL or SASL_PLAINTEXT to authenticate with SASL)",
                            protocol.map_or("", SecurityProtocol::name)
                        ),
                    ));
                }
            }
            return;
        }
        let served = || {
            self.sasl_mechanisms()
                .into_iter()
                .map(SaslMechanism::name)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let Some((key, value)) = mechanism_entry else {
            if !self.supports_mechanism(SaslMechanism::Gssapi) {
                errors.push(PropertyError {
                    key: "sasl.mechanism".to_owned(),
                    value: String::new(),
                    reason: format!(
                        "not set, so librdkafka would use GSSAPI (Kerberos), which this build lacks: set one of {}",
                        served()
                    ),
                });
            }
            return;
        };
        let Some(mechanism) = SaslMechanism::ALL.into_iter().find(|m| m.name() == value) else {
            let hint = SaslMechanism::ALL
                .into_iter()
                .find(|m| m.name().eq_ignore_ascii_case(value.trim()))
                .map(|m| format!(" (librdkafka compares it case-sensitively: {})", m.name()))
                .unwrap_or_default();
            errors.push(err(
                key,
                value,
                format!(
                    "unknown SASL mechanism{hint}; this build serves {}",
                    served()
                ),
            ));
            return;
        };
        if !self.supports_mechanism(mechanism) {
            let why = match mechanism {
                SaslMechanism::Gssapi => "Kerberos (GSSAPI) needs librdkafka built with cyrus-sasl, which this build is not",
                _ => "this build lacks it",
            };
            errors.push(err(key, value, format!("{why}; it serves {}", served())));
            return;
        }
        let has = |k: &str| properties.get(k).is_some_and(|v| !v.is_empty());
        match mechanism {
            SaslMechanism::Plain | SaslMechanism::ScramSha256 | SaslMechanism::ScramSha512 => {
                for needed in ["sasl.username", "sasl.password"] {
                    if !has(needed) {
                        errors.push(PropertyError {
                            key: needed.to_owned(),
                            value: String::new(),
                            reason: format!("required by sasl.mechanism={}", mechanism.name()),
                        });
                    }
                }
            }
            SaslMechanism::OAuthBearer => {
                let oidc = properties
                    .get("sasl.oauthbearer.method")
                    .is_some_and(|m| m.trim().eq_ignore_ascii_case("oidc"));
                let unsecured = properties
                    .get("enable.sasl.oauthbearer.unsecure.jwt")
                    .is_some_and(|v| v.trim() == "true");
                if oidc && !self.supports_oidc() {
                    errors.push(err(
                        "sasl.oauthbearer.method",
                        "oidc",
                        "this build has no OIDC token fetching (libcurl)".to_owned(),
                    ));
                } else if oidc && !has("sasl.oauthbearer.token.endpoint.url") {
                    errors.push(PropertyError {
                        key: "sasl.oauthbearer.token.endpoint.url".to_owned(),
                        value: String::new(),
                        reason: "required by sasl.oauthbearer.method=oidc".to_owned(),
                    });
                } else if !oidc && !unsecured {
                    // The bridge registers no token callback: without OIDC nothing would
                    // ever supply a token and every connection would wait for one.
                    errors.push(err(
                        key,
                        value,
                        "needs sasl.oauthbearer.method=oidc with sasl.oauthbearer.token.endpoint.url, sasl.oauthbearer.client.id and sasl.oauthbearer.client.secret".to_owned(),
                    ));
                }
            }
            SaslMechanism::Gssapi => {}
        }
    }

    fn check_tls(
        &self,
        properties: &BTreeMap<String, String>,
        protocol: Option<SecurityProtocol>,
        errors: &mut Vec<PropertyError>,
    ) {
        let Some(protocol) = protocol else { return };
        if !protocol.uses_tls() {
            // `ssl.*` only matters on a TLS connection; set with PLAINTEXT it is a forgotten
            // `security.protocol`, and the client would talk in clear to a TLS listener.
            for (key, value) in properties.iter().filter(|(k, _)| k.starts_with("ssl.")) {
                errors.push(err(
                    key,
                    value,
                    format!(
                        "ignored: security.protocol is {} (set SSL or SASL_SSL to use TLS)",
                        protocol.name()
                    ),
                ));
            }
            return;
        }
        // A client certificate (mTLS) comes with its private key, in one of three forms.
        let has = |k: &str| properties.get(k).is_some_and(|v| !v.is_empty());
        for (cert, key) in [
            ("ssl.certificate.location", "ssl.key.location"),
            ("ssl.certificate.pem", "ssl.key.pem"),
        ] {
            if has(cert) != has(key) {
                let (present, missing) = if has(cert) { (cert, key) } else { (key, cert) };
                errors.push(PropertyError {
                    key: missing.to_owned(),
                    value: String::new(),
                    reason: format!(
                        "required with {present}: a client certificate needs its private key"
                    ),
                });
            }
        }
    }
}

/// Whether a client asking for GSSAPI can be created (librdkafka picks the SASL provider when a
/// client is created). No broker is contacted: there is no `bootstrap.servers`, and the Kerberos
/// re-login (which would run `kinit`) is off.
///
/// Asked once per process: when the creation fails, rust-rdkafka 0.39 leaks the native config
/// it handed to `rd_kafka_new` (2.2 KB; found by the `config` fuzz target's leak detection), so
/// asking at every validation would leak that much each time.
fn gssapi_provider_present() -> bool {
    static PRESENT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PRESENT.get_or_init(|| {
        ClientConfig::new()
            .set("security.protocol", "sasl_plaintext")
            .set("sasl.mechanism", "GSSAPI")
            .set("sasl.kerberos.min.time.before.relogin", "0")
            .create::<BaseProducer>()
            .is_ok()
    })
}

/// [`Capabilities::check`] with this build's capabilities, every problem in one message (for
/// configuration validation: `kafka.properties`).
pub fn check_properties(properties: &BTreeMap<String, String>) -> Result<(), String> {
    let caps = Capabilities::of_this_build().map_err(|e| e.to_string())?;
    caps.check(properties).map_err(|errors| {
        errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    })
}

fn err(key: &str, value: &str, reason: String) -> PropertyError {
    PropertyError {
        key: key.to_owned(),
        value: if is_secret(key) {
            "[redacted]".to_owned()
        } else {
            value.to_owned()
        },
        reason,
    }
}

/// Properties whose values are secrets (or private keys) and must never be printed.
fn is_secret(key: &str) -> bool {
    key.contains("password")
        || key.contains("secret")
        || key == "ssl.key.pem"
        || key == "sasl.oauthbearer.config"
        || key == "sasl.jaas.config"
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// What librdkafka 2.12 lists when built without zstd, TLS and curl (the old build).
    const PLAIN_BUILD: &str = "gzip,snappy,sasl,regex,lz4,sasl_plain,plugins";

    fn props(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn this_build() -> Capabilities {
        Capabilities::of_this_build().unwrap()
    }

    fn errors(caps: &Capabilities, pairs: &[(&str, &str)]) -> Vec<String> {
        caps.check(&props(pairs))
            .err()
            .unwrap_or_default()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn this_build_serves_every_codec_tls_and_scram() {
        let caps = this_build();
        assert_eq!(caps.codecs(), Codec::ALL.to_vec(), "{}", caps.summary());
        assert_eq!(caps.security_protocols(), SecurityProtocol::ALL.to_vec());
        for m in [
            SaslMechanism::Plain,
            SaslMechanism::ScramSha256,
            SaslMechanism::ScramSha512,
            SaslMechanism::OAuthBearer,
        ] {
            assert!(caps.supports_mechanism(m), "{m:?}: {}", caps.summary());
        }
        assert!(caps.supports_oidc(), "{}", caps.summary());
        assert!(caps.version().starts_with("2."), "{}", caps.version());
        for f in [
            "zstd",
            "ssl",
            "sasl_scram",
            "sasl_oauthbearer",
            "oidc",
            "gzip",
        ] {
            assert!(
                caps.has(f),
                "builtin.features lacks {f}: {:?}",
                caps.features().collect::<Vec<_>>()
            );
        }
        // Listed by librdkafka's CMake build, but without a provider: see of_this_build.
        assert!(
            !caps.supports_mechanism(SaslMechanism::Gssapi),
            "{}",
            caps.summary()
        );
    }

    #[test]
    fn a_secured_client_configuration_passes() {
        let ca = std::env::temp_dir();
        let ca = ca.to_str().unwrap();
        for mechanism in ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] {
            let e = errors(
                &this_build(),
                &[
                    ("security.protocol", "SASL_SSL"),
                    ("sasl.mechanism", mechanism),
                    ("sasl.username", "u"),
                    ("sasl.password", "p"),
                    ("ssl.ca.location", ca),
                    ("compression.type", "zstd"),
                ],
            );
            assert!(e.is_empty(), "{mechanism}: {e:?}");
        }
        let mtls = errors(
            &this_build(),
            &[
                ("security.protocol", "ssl"),
                ("ssl.ca.location", "probe"),
                ("ssl.certificate.location", ca),
                ("ssl.key.location", ca),
            ],
        );
        assert!(mtls.is_empty(), "{mtls:?}");
        assert!(this_build().check(&BTreeMap::new()).is_ok());
    }

    #[test]
    fn a_build_without_tls_names_the_protocol_it_cannot_serve() {
        let caps = Capabilities::from_features("2.12.1", PLAIN_BUILD);
        let e = errors(
            &caps,
            &[
                ("security.protocol", "SASL_SSL"),
                ("sasl.mechanism", "PLAIN"),
                ("sasl.username", "u"),
                ("sasl.password", "p"),
            ],
        );
        assert_eq!(
            e,
            ["security.protocol=SASL_SSL: this build has no TLS (OpenSSL): it serves PLAINTEXT, SASL_PLAINTEXT"]
        );
    }

    #[test]
    fn a_codec_the_build_lacks_or_an_unknown_one_is_named() {
        let caps = Capabilities::from_features("2.12.1", PLAIN_BUILD);
        assert_eq!(
            errors(&caps, &[("compression.type", "zstd")]),
            ["compression.type=zstd: this build has no zstd codec (it serves none, gzip, snappy, lz4)"]
        );
        let e = errors(&this_build(), &[("compression.codec", "brotli")]);
        assert_eq!(
            e,
            ["compression.codec=brotli: unknown compression codec (this build serves none, gzip, snappy, lz4, zstd)"]
        );
    }

    #[test]
    fn gssapi_is_refused_whether_asked_for_or_left_as_librdkafkas_default() {
        let caps = this_build();
        let e = errors(
            &caps,
            &[
                ("security.protocol", "SASL_SSL"),
                ("sasl.mechanism", "GSSAPI"),
            ],
        );
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with(
                "sasl.mechanism=GSSAPI: Kerberos (GSSAPI) needs librdkafka built with cyrus-sasl"
            ),
            "{e:?}"
        );
        assert!(
            e[0].ends_with("it serves PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, OAUTHBEARER"),
            "{e:?}"
        );

        let e = errors(&caps, &[("security.protocol", "sasl_ssl")]);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("sasl.mechanism: not set, so librdkafka would use GSSAPI"),
            "{e:?}"
        );
    }

    #[test]
    fn a_mechanism_in_the_wrong_case_or_without_credentials_is_named() {
        let caps = this_build();
        let e = errors(
            &caps,
            &[
                ("security.protocol", "SASL_SSL"),
                ("sasl.mechanisms", "scram-sha-512"),
                ("sasl.username", "u"),
                ("sasl.password", "p"),
            ],
        );
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].starts_with("sasl.mechanisms=scram-sha-512: unknown SASL mechanism (librdkafka compares it case-sensitively: SCRAM-SHA-512)"), "{e:?}");

        let e = errors(
            &caps,
            &[
                ("security.protocol", "SASL_SSL"),
                ("sasl.mechanism", "SCRAM-SHA-256"),
            ],
        );
        assert_eq!(
            e,
            [
                "sasl.password: required by sasl.mechanism=SCRAM-SHA-256",
                "sasl.username: required by sasl.mechanism=SCRAM-SHA-256"
            ]
        );
    }

    #[test]
    fn oauthbearer_needs_oidc_because_the_bridge_has_no_token_callback() {
        let caps = this_build();
        let e = errors(
            &caps,
            &[
                ("security.protocol", "SASL_SSL"),
                ("sasl.mechanism", "OAUTHBEARER"),
            ],
        );
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("sasl.mechanism=OAUTHBEARER: needs sasl.oauthbearer.method=oidc"),
            "{e:?}"
        );
        let oidc = errors(
            &caps,
            &[
                ("security.protocol", "SASL_SSL"),
                ("sasl.mechanism", "OAUTHBEARER"),
                ("sasl.oauthbearer.method", "oidc"),
                ("sasl.oauthbearer.client.id", "bridge"),
                ("sasl.oauthbearer.client.secret", "s3cr3t"),
                (
                    "sasl.oauthbearer.token.endpoint.url",
                    "https://idp.example/token",
                ),
            ],
        );
        assert!(oidc.is_empty(), "{oidc:?}");
        let old = Capabilities::from_features(
            "2.12.1",
            "gzip,ssl,sasl,sasl_plain,sasl_scram,sasl_oauthbearer",
        );
        let e = errors(
            &old,
            &[
                ("security.protocol", "SASL_SSL"),
                ("sasl.mechanism", "OAUTHBEARER"),
                ("sasl.oauthbearer.method", "oidc"),
            ],
        );
        assert_eq!(
            e,
            ["sasl.oauthbearer.method=oidc: this build has no OIDC token fetching (libcurl)"]
        );
    }

    #[test]
    fn settings_the_protocol_would_ignore_are_refused_without_showing_secrets() {
        let e = errors(
            &this_build(),
            &[
                ("sasl.mechanism", "PLAIN"),
                ("sasl.password", "hunter2"),
                ("ssl.ca.location", "probe"),
            ],
        );
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(
            e[0].starts_with("sasl.mechanism=PLAIN: ignored: security.protocol is PLAINTEXT"),
            "{e:?}"
        );
        assert!(
            e[1].starts_with("sasl.password=[redacted]: ignored"),
            "{e:?}"
        );
        assert!(e[2].starts_with("ssl.ca.location=probe: ignored: security.protocol is PLAINTEXT (set SSL or SASL_SSL"), "{e:?}");
        assert!(!e.concat().contains("hunter2"));
    }

    #[test]
    fn a_client_certificate_without_its_key_and_a_missing_file_are_named() {
        let e = errors(
            &this_build(),
            &[
                ("security.protocol", "SSL"),
                ("ssl.certificate.location", "/nonexistent/client.pem"),
            ],
        );
        assert_eq!(
            e,
            [
                "ssl.certificate.location=/nonexistent/client.pem: no such file or directory",
                "ssl.key.location: required with ssl.certificate.location: a client certificate needs its private key",
            ]
        );
    }

    #[test]
    fn librdkafkas_own_refusals_name_the_key_and_the_value() {
        let e = errors(
            &this_build(),
            &[
                ("linger.ms", "soon"),
                ("no.such.property", "1"),
                ("security.protocol", "carrier-pigeon"),
            ],
        );
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(
            e[0].starts_with("linger.ms=soon: refused by librdkafka: "),
            "{e:?}"
        );
        assert!(
            e[1].starts_with(
                "no.such.property=1: refused by librdkafka: No such configuration property"
            ),
            "{e:?}"
        );
        assert!(
            e[2].starts_with("security.protocol=carrier-pigeon: unknown security protocol"),
            "{e:?}"
        );
    }

    #[test]
    fn the_summary_lists_what_the_build_serves() {
        let caps = Capabilities::from_features("2.12.1", PLAIN_BUILD);
        assert_eq!(
            caps.summary(),
            "librdkafka 2.12.1: codecs gzip, snappy, lz4; security protocols PLAINTEXT, SASL_PLAINTEXT; SASL mechanisms PLAIN"
        );
    }
}
