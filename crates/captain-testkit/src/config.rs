//! A bridge's configuration for a test, as the bridge's own [`Settings`]: tests change typed
//! fields, and the file handed to the process is those settings serialized, so a key renamed
//! in the bridge cannot leave the harness writing a stale one.

use anyhow::Context;
use captain_bridge::config::Settings;
use std::net::SocketAddr;
use std::time::Duration;

/// The API key every simulator and bridge of the harness share.
pub const API_KEY: &str = "testkit-api-key";
/// Callback keys of every bridge under test: `k2` signs, `k1` still verifies (rotation).
pub const CALLBACK_KEYS: &str =
    "k2:c2Vjb25kLWtleS1zZWNvbmQta2V5LXNlY29uZA==,k1:Zmlyc3Qta2V5LWZpcnN0LWtleS1maXJzdC1rZXk=";
/// The key id that signs new callback tokens.
pub const SIGNING_KID: &str = "k2";

/// Settings for a bridge on `bootstrap` talking to the API at `api_base`: listeners on port 0
/// of the loopback (the callback URL is derived from the bound port), short backoffs, a rate
/// limit well above what a test sends, readable logs. Topics and group are the bridge's
/// defaults until [`crate::Topics::apply`] names them.
pub fn bridge_settings(bootstrap: &str, api_base: &str) -> Settings {
    let mut s = Settings::default();
    s.kafka.bootstrap_servers = bootstrap.to_owned();
    s.kafka.create_topics = true;
    s.kafka.partitions = 3;
    s.kafka.delivery_timeout = Duration::from_secs(10);
    s.captain.base_url = api_base.to_owned();
    s.captain.initial_backoff = Duration::from_millis(50);
    s.captain.max_backoff = Duration::from_millis(500);
    s.captain.rate_limit.rate_per_sec = 2000.0;
    s.captain.rate_limit.ceiling_per_sec = 2000.0;
    s.captain.rate_limit.burst = 200;
    s.callbacks.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    s.callbacks.public_base_url = None;
    s.callbacks.signing_key_id = SIGNING_KID.to_owned();
    s.callbacks.ack_timeout = Duration::from_secs(3);
    s.ops.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    s.shutdown.drain_timeout = Duration::from_secs(5);
    s.log.format = "text".into();
    s.log.level = "info".into();
    s
}

/// The settings as the TOML file the bridge reads (secrets are never part of it).
pub fn to_toml(settings: &Settings) -> anyhow::Result<String> {
    toml::to_string(settings).context("serializing the bridge settings")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_serialized_settings_load_back_as_the_same_settings() {
        let mut s = bridge_settings("127.0.0.1:9092", "http://127.0.0.1:1/v4");
        s.kafka
            .properties
            .insert("statistics.interval.ms".into(), "1000".into());
        let text = to_toml(&s).unwrap_or_default();
        let path = std::env::temp_dir().join(format!("testkit-{}.toml", uuid::Uuid::new_v4()));
        std::fs::write(&path, &text).unwrap_or_default();
        let env = [
            ("CAPTAIN_BRIDGE_API_KEY".to_owned(), API_KEY.to_owned()),
            (
                "CAPTAIN_BRIDGE_CALLBACK_KEYS".to_owned(),
                CALLBACK_KEYS.to_owned(),
            ),
        ];
        let loaded = Settings::load_from(Some(&path), env);
        let _ = std::fs::remove_file(&path);
        let loaded = loaded.unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(
            serde_json::to_value(&loaded).ok(),
            serde_json::to_value(&s).ok()
        );
    }
}
