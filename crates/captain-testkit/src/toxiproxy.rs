//! A client for Toxiproxy's HTTP API (the server `scripts/toxiproxy.sh start` runs): create TCP
//! proxies between a component and what it talks to (the bridge and Kafka, the bridge and the
//! API), then add and remove toxics on them (latency, a cut, a bandwidth cap, a connection reset)
//! to inject faults into real traffic.
//!
//! Written against the v2.12.0 API: `POST /proxies`, `POST|DELETE /proxies/{name}`,
//! `POST /proxies/{name}/toxics`, `DELETE /proxies/{name}/toxics/{toxic}`, `POST /reset`,
//! `GET /version`.

use std::time::Duration;

use reqwest::{Client, RequestBuilder, Response};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The environment variable holding the server's URL, as printed by `scripts/toxiproxy.sh start`.
pub const ENV_URL: &str = "TOXIPROXY_URL";

/// Longest wait for one API call: the server is local, so anything longer is a failure.
const API_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a Toxiproxy call failed.
#[derive(Debug, thiserror::Error)]
pub enum ToxiproxyError {
    /// No server URL in the environment.
    #[error("{ENV_URL} is not set: start a server with scripts/toxiproxy.sh start and export the TOXIPROXY_URL=... line it prints")]
    NotConfigured,
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    /// The server did not answer (not running, wrong URL, timed out).
    #[error("toxiproxy at {url} did not answer {what}: {source}")]
    Unreachable {
        /// The server's URL.
        url: String,
        /// The call, e.g. `create proxy kafka`.
        what: String,
        /// The transport error.
        #[source]
        source: reqwest::Error,
    },
    /// The server answered with an error (unknown proxy, name taken, bad attributes).
    #[error("toxiproxy refused {what}: HTTP {status}: {message}")]
    Refused {
        /// The call, e.g. `add toxic latency_downstream to kafka`.
        what: String,
        /// The HTTP status.
        status: u16,
        /// The server's `error` field, or its body.
        message: String,
    },
    /// The server answered 2xx with a body this client does not understand.
    #[error("toxiproxy answered {what} with an unexpected body: {source}")]
    Decode {
        /// The call.
        what: String,
        /// The decoding error.
        #[source]
        source: reqwest::Error,
    },
}

impl ToxiproxyError {
    /// Whether the same call may succeed if repeated (the server was not reachable yet).
    pub fn is_retriable(&self) -> bool {
        matches!(self, Self::Unreachable { .. })
    }
}

/// A Toxiproxy server.
#[derive(Debug, Clone)]
pub struct Toxiproxy {
    http: Client,
    url: String,
}

impl Toxiproxy {
    /// A client for the server at `url` (e.g. `http://127.0.0.1:8474`).
    pub fn new(url: impl Into<String>) -> Result<Self, ToxiproxyError> {
        let http = Client::builder()
            .timeout(API_TIMEOUT)
            // The server is local: an HTTP_PROXY from the environment must not be in the way.
            .no_proxy()
            .build()
            .map_err(ToxiproxyError::Client)?;
        Ok(Self {
            http,
            url: url.into().trim_end_matches('/').to_owned(),
        })
    }

    /// A client for the server named by [`ENV_URL`].
    pub fn from_env() -> Result<Self, ToxiproxyError> {
        match std::env::var(ENV_URL) {
            Ok(url) if !url.trim().is_empty() => Self::new(url.trim()),
            _ => Err(ToxiproxyError::NotConfigured),
        }
    }

    /// The server's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The server's version, e.g. `v2.12.0`.
    pub async fn version(&self) -> Result<String, ToxiproxyError> {
        #[derive(Deserialize)]
        struct Version {
            version: String,
        }
        let what = "version".to_owned();
        let req = self.http.get(format!("{}/version", self.url));
        let v: Version = self.json(&what, req).await?;
        Ok(v.version)
    }

    /// Creates an enabled proxy listening on `listen` (`127.0.0.1:0` picks a free port, see
    /// [`Proxy::listen`]) and forwarding to `upstream`.
    pub async fn create_proxy(
        &self,
        name: &str,
        listen: &str,
        upstream: &str,
    ) -> Result<Proxy, ToxiproxyError> {
        let what = format!("create proxy {name}");
        let req = self
            .http
            .post(format!("{}/proxies", self.url))
            .json(&json!({
                "name": name,
                "listen": listen,
                "upstream": upstream,
                "enabled": true,
            }));
        let info: ProxyInfo = self.json(&what, req).await?;
        Ok(Proxy {
            server: self.clone(),
            info,
        })
    }

    /// The existing proxy `name`, with its current toxics.
    pub async fn proxy(&self, name: &str) -> Result<Proxy, ToxiproxyError> {
        let what = format!("show proxy {name}");
        let req = self.http.get(format!("{}/proxies/{name}", self.url));
        let info: ProxyInfo = self.json(&what, req).await?;
        Ok(Proxy {
            server: self.clone(),
            info,
        })
    }

    /// Re-enables every proxy and removes every toxic (proxies stay).
    pub async fn reset(&self) -> Result<(), ToxiproxyError> {
        let req = self.http.post(format!("{}/reset", self.url));
        self.call("reset", req).await.map(drop)
    }

    async fn call(&self, what: &str, req: RequestBuilder) -> Result<Response, ToxiproxyError> {
        let resp = req
            .send()
            .await
            .map_err(|source| ToxiproxyError::Unreachable {
                url: self.url.clone(),
                what: what.to_owned(),
                source,
            })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        #[derive(Deserialize)]
        struct ApiError {
            error: String,
        }
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        let message = serde_json::from_str::<ApiError>(&body)
            .map(|e| e.error)
            .unwrap_or(body);
        Err(ToxiproxyError::Refused {
            what: what.to_owned(),
            status,
            message,
        })
    }

    async fn json<T: for<'de> Deserialize<'de>>(
        &self,
        what: &str,
        req: RequestBuilder,
    ) -> Result<T, ToxiproxyError> {
        self.call(what, req)
            .await?
            .json()
            .await
            .map_err(|source| ToxiproxyError::Decode {
                what: what.to_owned(),
                source,
            })
    }
}

/// A proxy as the server describes it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ProxyInfo {
    /// Its name.
    pub name: String,
    /// The address it listens on (the actual port when created with port 0).
    pub listen: String,
    /// Where it forwards to.
    pub upstream: String,
    /// Whether it accepts and forwards connections.
    pub enabled: bool,
    /// Its active toxics.
    #[serde(default)]
    pub toxics: Vec<ToxicInfo>,
}

/// A toxic as the server describes it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ToxicInfo {
    /// Its name, unique per proxy.
    pub name: String,
    /// Its type, e.g. `latency`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `upstream` or `downstream`.
    pub stream: String,
    /// Probability of applying to a connection.
    pub toxicity: f32,
    /// Type-specific attributes.
    pub attributes: Value,
}

/// One proxy of a [`Toxiproxy`] server.
#[derive(Debug, Clone)]
pub struct Proxy {
    server: Toxiproxy,
    info: ProxyInfo,
}

impl Proxy {
    /// Its name.
    pub fn name(&self) -> &str {
        &self.info.name
    }

    /// The `host:port` clients connect to.
    pub fn listen(&self) -> &str {
        &self.info.listen
    }

    /// The `host:port` it forwards to.
    pub fn upstream(&self) -> &str {
        &self.info.upstream
    }

    /// Adds `toxic`; its name must not be in use on this proxy.
    pub async fn add_toxic(&self, toxic: &Toxic) -> Result<ToxicInfo, ToxiproxyError> {
        let what = format!("add toxic {} to {}", toxic.name, self.info.name);
        let req = self
            .server
            .http
            .post(format!(
                "{}/proxies/{}/toxics",
                self.server.url, self.info.name
            ))
            .json(&toxic.body());
        self.server.json(&what, req).await
    }

    /// Removes the toxic named `name` (see [`Toxic::name`]).
    pub async fn remove_toxic(&self, name: &str) -> Result<(), ToxiproxyError> {
        let what = format!("remove toxic {name} from {}", self.info.name);
        let req = self.server.http.delete(format!(
            "{}/proxies/{}/toxics/{name}",
            self.server.url, self.info.name
        ));
        self.server.call(&what, req).await.map(drop)
    }

    /// The proxy's active toxics.
    pub async fn toxics(&self) -> Result<Vec<ToxicInfo>, ToxiproxyError> {
        let what = format!("list toxics of {}", self.info.name);
        let req = self.server.http.get(format!(
            "{}/proxies/{}/toxics",
            self.server.url, self.info.name
        ));
        self.server.json(&what, req).await
    }

    /// Takes the proxy down (`false`: its connections are closed, new ones refused) or up.
    pub async fn set_enabled(&mut self, enabled: bool) -> Result<(), ToxiproxyError> {
        let what = format!("set {} enabled={enabled}", self.info.name);
        self.update(&what, json!({ "enabled": enabled })).await
    }

    /// Points the proxy at another upstream (its open connections are dropped).
    pub async fn set_upstream(&mut self, upstream: &str) -> Result<(), ToxiproxyError> {
        let what = format!("set {} upstream={upstream}", self.info.name);
        self.update(&what, json!({ "upstream": upstream })).await
    }

    /// Deletes the proxy; its listener closes.
    pub async fn delete(self) -> Result<(), ToxiproxyError> {
        let what = format!("delete proxy {}", self.info.name);
        let req = self
            .server
            .http
            .delete(format!("{}/proxies/{}", self.server.url, self.info.name));
        self.server.call(&what, req).await.map(drop)
    }

    async fn update(&mut self, what: &str, body: Value) -> Result<(), ToxiproxyError> {
        let req = self
            .server
            .http
            .post(format!("{}/proxies/{}", self.server.url, self.info.name))
            .json(&body);
        self.info = self.server.json(what, req).await?;
        Ok(())
    }
}

/// Which direction of a proxied connection a toxic affects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    /// Client → upstream (requests).
    Upstream,
    /// Upstream → client (answers); the server's default.
    Downstream,
}

impl Stream {
    fn as_str(self) -> &'static str {
        match self {
            Self::Upstream => "upstream",
            Self::Downstream => "downstream",
        }
    }
}

/// What a toxic does.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ToxicKind {
    /// Delays all data by `latency` ± `jitter`.
    Latency {
        /// Added delay.
        latency: Duration,
        /// Random variation of the delay.
        jitter: Duration,
    },
    /// Caps the rate at `kb_per_sec` kilobytes per second.
    Bandwidth {
        /// The rate in KB/s.
        kb_per_sec: u64,
    },
    /// Stops all data; closes the connection after `after` (when zero: at the toxic's removal).
    Timeout {
        /// When to close the connection; zero holds it open, silent.
        after: Duration,
    },
    /// Resets connections (TCP RST) after `after`.
    ResetPeer {
        /// When to reset; zero resets at once.
        after: Duration,
    },
    /// Delays the close of a connection by `delay`.
    SlowClose {
        /// Added delay before closing.
        delay: Duration,
    },
    /// Closes the connection once `bytes` have passed.
    LimitData {
        /// Bytes allowed through.
        bytes: u64,
    },
}

impl ToxicKind {
    /// The server's name for the type.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Latency { .. } => "latency",
            Self::Bandwidth { .. } => "bandwidth",
            Self::Timeout { .. } => "timeout",
            Self::ResetPeer { .. } => "reset_peer",
            Self::SlowClose { .. } => "slow_close",
            Self::LimitData { .. } => "limit_data",
        }
    }

    fn attributes(&self) -> Value {
        match *self {
            Self::Latency { latency, jitter } => {
                json!({ "latency": millis(latency), "jitter": millis(jitter) })
            }
            Self::Bandwidth { kb_per_sec } => json!({ "rate": kb_per_sec }),
            Self::Timeout { after } => json!({ "timeout": millis(after) }),
            Self::ResetPeer { after } => json!({ "timeout": millis(after) }),
            Self::SlowClose { delay } => json!({ "delay": millis(delay) }),
            Self::LimitData { bytes } => json!({ "bytes": bytes }),
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A toxic to add to a proxy: built by one of the constructors, then adjusted.
///
/// ```
/// use std::time::Duration;
/// use captain_testkit::toxiproxy::Toxic;
/// let slow_requests = Toxic::latency(Duration::from_millis(300)).upstream();
/// assert_eq!(slow_requests.name(), "latency_upstream");
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Toxic {
    name: String,
    kind: ToxicKind,
    stream: Stream,
    toxicity: f32,
}

impl Toxic {
    /// A downstream toxic of `kind` on every connection, named `<type>_downstream`.
    pub fn new(kind: ToxicKind) -> Self {
        Self {
            name: format!("{}_downstream", kind.type_name()),
            kind,
            stream: Stream::Downstream,
            toxicity: 1.0,
        }
    }

    /// Delays data by `latency`.
    pub fn latency(latency: Duration) -> Self {
        Self::new(ToxicKind::Latency {
            latency,
            jitter: Duration::ZERO,
        })
    }

    /// Stops all data, holding connections open until the toxic is removed: a network cut
    /// that the peers only notice through their own timeouts. Removing it closes the
    /// connections it held (toxiproxy's cleanup of a timeout toxic); new ones get through.
    pub fn cut() -> Self {
        Self::timeout(Duration::ZERO)
    }

    /// Stops all data and closes connections after `after` (zero: see [`Toxic::cut`]).
    pub fn timeout(after: Duration) -> Self {
        Self::new(ToxicKind::Timeout { after })
    }

    /// Caps the rate at `kb_per_sec` KB/s.
    pub fn bandwidth(kb_per_sec: u64) -> Self {
        Self::new(ToxicKind::Bandwidth { kb_per_sec })
    }

    /// Resets connections (TCP RST) after `after`.
    pub fn reset_peer(after: Duration) -> Self {
        Self::new(ToxicKind::ResetPeer { after })
    }

    /// Sets the random variation of a latency toxic (ignored by other kinds).
    pub fn jitter(mut self, jitter: Duration) -> Self {
        if let ToxicKind::Latency { jitter: j, .. } = &mut self.kind {
            *j = jitter;
        }
        self
    }

    /// Applies the toxic to client → upstream data instead (renamed `<type>_upstream`).
    pub fn upstream(self) -> Self {
        self.on(Stream::Upstream)
    }

    /// Applies the toxic to `stream` (renamed `<type>_<stream>`).
    pub fn on(mut self, stream: Stream) -> Self {
        let default = format!("{}_{}", self.kind.type_name(), self.stream.as_str());
        if self.name == default {
            self.name = format!("{}_{}", self.kind.type_name(), stream.as_str());
        }
        self.stream = stream;
        self
    }

    /// Names the toxic (names are unique per proxy).
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Applies the toxic to this fraction of connections (0.0..=1.0).
    pub fn toxicity(mut self, toxicity: f32) -> Self {
        self.toxicity = toxicity.clamp(0.0, 1.0);
        self
    }

    /// The name to remove it by.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn body(&self) -> Value {
        json!({
            "name": self.name,
            "type": self.kind.type_name(),
            "stream": self.stream,
            "toxicity": self.toxicity,
            "attributes": self.kind.attributes(),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_toxic_body_carries_the_servers_attribute_names_in_milliseconds() {
        let t = Toxic::latency(Duration::from_millis(250))
            .jitter(Duration::from_millis(20))
            .upstream();
        assert_eq!(
            t.body(),
            json!({"name": "latency_upstream", "type": "latency", "stream": "upstream",
                   "toxicity": 1.0, "attributes": {"latency": 250, "jitter": 20}})
        );
        assert_eq!(
            Toxic::cut().body()["attributes"],
            json!({"timeout": 0}),
            "a cut is a timeout toxic that never closes"
        );
        assert_eq!(
            Toxic::bandwidth(64).body()["attributes"],
            json!({"rate": 64})
        );
        assert_eq!(
            Toxic::reset_peer(Duration::from_secs(1)).body()["type"],
            "reset_peer"
        );
    }

    #[test]
    fn a_custom_name_survives_a_change_of_stream() {
        let t = Toxic::cut().named("partition").upstream();
        assert_eq!(t.name(), "partition");
        assert_eq!(t.body()["stream"], "upstream");
    }

    #[test]
    fn a_missing_url_says_how_to_get_one() {
        let err = ToxiproxyError::NotConfigured.to_string();
        assert!(err.contains("scripts/toxiproxy.sh start"), "{err}");
    }
}
