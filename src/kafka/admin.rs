//! Topic provisioning at start-up: create what is missing, check what exists.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// A topic the bridge needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    /// Topic name.
    pub name: String,
    /// Partitions when created.
    pub partitions: i32,
    /// Replication factor when created.
    pub replication: i32,
    /// Topic configuration when created, e.g. `("cleanup.policy", "compact")`.
    pub config: Vec<(String, String)>,
}

impl TopicSpec {
    /// Whether the spec asks for a compacted topic.
    fn wants_compaction(&self) -> bool {
        self.config
            .iter()
            .any(|(k, v)| k == "cleanup.policy" && v.split(',').any(|p| p.trim() == "compact"))
    }
}

/// Why topics could not be provisioned.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The admin call failed as a whole (broker unreachable, timeout).
    #[error("admin request failed: {0}")]
    Kafka(#[from] KafkaError),
    /// A topic could not be created.
    #[error("cannot create topic {topic}: {code}")]
    Create {
        /// Topic name.
        topic: String,
        /// Broker answer.
        code: RDKafkaErrorCode,
    },
    /// An existing topic must be compacted and is not.
    #[error("topic {topic} must have cleanup.policy=compact, has {actual}")]
    NotCompacted {
        /// Topic name.
        topic: String,
        /// Its current cleanup.policy.
        actual: String,
    },
    /// A topic is missing from the cluster's metadata.
    #[error("topic {0} not found")]
    UnknownTopic(String),
}

fn admin_client(
    bootstrap: &str,
    properties: &BTreeMap<String, String>,
) -> Result<AdminClient<DefaultClientContext>, KafkaError> {
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", bootstrap);
    for (k, v) in properties {
        cc.set(k, v);
    }
    cc.create()
}

/// Creates the missing topics (an existing topic is fine) and checks that every topic whose
/// spec asks for `cleanup.policy=compact` has it, since run state would otherwise expire.
pub async fn ensure_topics(
    bootstrap: &str,
    specs: &[TopicSpec],
    timeout: Duration,
) -> Result<(), AdminError> {
    ensure_topics_with(bootstrap, &BTreeMap::new(), specs, timeout).await
}

/// [`ensure_topics`] with librdkafka `properties` for the admin client (`kafka.properties`: a
/// secured cluster needs its `security.protocol`, SASL and TLS settings here too).
pub async fn ensure_topics_with(
    bootstrap: &str,
    properties: &BTreeMap<String, String>,
    specs: &[TopicSpec],
    timeout: Duration,
) -> Result<(), AdminError> {
    let admin = admin_client(bootstrap, properties)?;
    let options = AdminOptions::new().operation_timeout(Some(timeout));
    let new_topics: Vec<NewTopic<'_>> = specs
        .iter()
        .map(|spec| {
            spec.config.iter().fold(
                NewTopic::new(
                    &spec.name,
                    spec.partitions,
                    TopicReplication::Fixed(spec.replication),
                ),
                |topic, (k, v)| topic.set(k, v),
            )
        })
        .collect();
    for result in admin.create_topics(new_topics.iter(), &options).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(AdminError::Create { topic, code }),
        }
    }
    let compacted: Vec<&TopicSpec> = specs.iter().filter(|s| s.wants_compaction()).collect();
    if compacted.is_empty() {
        return Ok(());
    }
    let resources: Vec<ResourceSpecifier<'_>> = compacted
        .iter()
        .map(|s| ResourceSpecifier::Topic(&s.name))
        .collect();
    let described = admin.describe_configs(resources.iter(), &options).await?;
    for (spec, result) in compacted.iter().zip(described) {
        let resource = result.map_err(|code| AdminError::Create {
            topic: spec.name.clone(),
            code,
        })?;
        let actual = resource
            .get("cleanup.policy")
            .and_then(|e| e.value.clone())
            .unwrap_or_default();
        if !actual.split(',').any(|p| p.trim() == "compact") {
            return Err(AdminError::NotCompacted {
                topic: spec.name.clone(),
                actual,
            });
        }
    }
    Ok(())
}

/// The number of partitions of `topic`, from cluster metadata.
pub async fn partition_count(
    bootstrap: &str,
    topic: &str,
    timeout: Duration,
) -> Result<i32, AdminError> {
    let admin = admin_client(bootstrap, &BTreeMap::new())?;
    let topic = topic.to_owned();
    // Metadata fetches block on the network: keep them off the async workers.
    let metadata = tokio::task::spawn_blocking(move || {
        let md = admin.inner().fetch_metadata(Some(&topic), timeout);
        (topic, md)
    })
    .await
    .map_err(|_| AdminError::Kafka(KafkaError::Canceled))?;
    let (topic, metadata) = metadata;
    let metadata = metadata?;
    let t = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .filter(|t| t.error().is_none() && !t.partitions().is_empty())
        .ok_or_else(|| AdminError::UnknownTopic(topic.clone()))?;
    Ok(t.partitions().len() as i32)
}
