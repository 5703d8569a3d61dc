//! One test's topics and consumer group: every topic the bridge knows gets a unique name
//! (a topic added to the bridge's `TopicSettings` later is covered without a change here), and
//! they are created through the bridge's own topic specs.

use anyhow::Context;
use captain_bridge::config::{Settings, TopicSettings};
use std::ops::Deref;
use std::time::Duration;

/// The topic names and group of one test or measurement.
#[derive(Debug, Clone)]
pub struct Topics {
    pub names: TopicSettings,
    pub group: String,
}

impl Deref for Topics {
    type Target = TopicSettings;

    fn deref(&self) -> &TopicSettings {
        &self.names
    }
}

impl Topics {
    /// `{prefix}.{test}.{id}.{field}` for every topic field, and group `{prefix}-{test}-{id}`.
    pub fn unique(prefix: &str, test: &str) -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let id = &id[..10];
        let mut fields = match serde_json::to_value(TopicSettings::default()) {
            Ok(serde_json::Value::Object(fields)) => fields,
            _ => serde_json::Map::new(),
        };
        for (field, name) in fields.iter_mut() {
            *name = serde_json::Value::String(format!("{prefix}.{test}.{id}.{field}"));
        }
        let names = serde_json::from_value(serde_json::Value::Object(fields))
            .unwrap_or_else(|_| TopicSettings::default());
        Self {
            names,
            group: format!("{prefix}-{test}-{id}"),
        }
    }

    /// Writes the names and group into a bridge's settings.
    pub fn apply(&self, settings: &mut Settings) {
        settings.kafka.topics = self.names.clone();
        settings.kafka.group_id = self.group.clone();
    }

    /// Creates the topics the bridge configured with `settings` would create (its own specs:
    /// partitions, compaction), before it starts, so readers can attach first.
    pub async fn create(&self, settings: &Settings) -> anyhow::Result<()> {
        let mut settings = settings.clone();
        self.apply(&mut settings);
        let access = captain_bridge::kafka::ClusterAccess {
            bootstrap: settings.kafka.bootstrap_servers.clone(),
            properties: settings.kafka.properties.clone(),
        };
        captain_bridge::kafka::ensure_topics(
            &access,
            &captain_bridge::app::topic_specs(&settings),
            Duration::from_secs(30),
        )
        .await
        .context("creating the test's topics")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_topic_gets_a_name_of_its_own() {
        let t = Topics::unique("e2e", "names");
        let names = serde_json::to_value(&t.names).unwrap_or_default();
        let names: Vec<&str> = names
            .as_object()
            .map(|m| m.values().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        assert!(names.len() >= 6, "{names:?}");
        let distinct: std::collections::HashSet<&&str> = names.iter().collect();
        assert_eq!(distinct.len(), names.len());
        assert!(names.iter().all(|n| n.starts_with("e2e.names.")));
        assert_ne!(Topics::unique("e2e", "names").group, t.group);
    }
}
