//! Routing (which topic a table's events go to) and topic creation.

use std::collections::HashSet;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;

use super::config::{is_topic_char, KafkaSinkSection};
use crate::model::RelationSchema;
use crate::sink::SinkError;

/// `template` with `{schema}` and `{table}` replaced by `rel`'s names;
/// characters Kafka does not allow in topic names become `_`.
pub fn render(template: &str, rel: &RelationSchema) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| if is_topic_char(c) { c } else { '_' })
            .collect()
    };
    let mut t = template
        .replace("{schema}", &clean(&rel.schema))
        .replace("{table}", &clean(&rel.name));
    if t.len() > 249 {
        let mut end = 249;
        while !t.is_char_boundary(end) {
            end -= 1;
        }
        t.truncate(end);
    }
    t
}

/// The topic of `rel`'s change events: its `table_topics` entry, else `topic`.
pub fn table_topic(cfg: &KafkaSinkSection, rel: &RelationSchema) -> String {
    let name = rel.qualified_name();
    render(cfg.table_topic(&name).unwrap_or(&cfg.topic), rel)
}

/// Creates missing topics (once per topic per run): the change, message
/// and transaction topics when `create_topics`, the progress topic when
/// `create_topics` or `create_progress_topic`.
pub struct TopicMaker {
    admin: Option<AdminClient<DefaultClientContext>>,
    /// For metadata lookups (the progress topic is created only when the
    /// brokers do not list it).
    client: rdkafka::ClientConfig,
    /// `create_topics`: every topic; without it only the progress topic.
    all: bool,
    progress: bool,
    partitions: i32,
    replication: i32,
    config: Vec<(String, String)>,
    done: HashSet<String>,
    sink: String,
}

/// Which setting allowed a topic's creation (for the error's fix).
#[derive(Clone, Copy)]
enum Why {
    CreateTopics,
    Progress,
}

impl TopicMaker {
    pub fn new(cfg: &KafkaSinkSection) -> Result<TopicMaker, SinkError> {
        let admin = if cfg.create_topics || cfg.create_progress_topic {
            Some(cfg.client_config().create().map_err(|e| {
                SinkError::definite(
                    &cfg.name,
                    format!("cannot create the Kafka admin client: {e}"),
                )
            })?)
        } else {
            None
        };
        Ok(TopicMaker {
            admin,
            client: cfg.client_config(),
            all: cfg.create_topics,
            progress: cfg.create_progress_topic,
            partitions: cfg.topic_partitions,
            replication: cfg.topic_replication_factor,
            config: cfg
                .topic_config
                .iter()
                .map(|(k, v)| (k.clone(), v.0.clone()))
                .collect(),
            done: HashSet::new(),
            sink: cfg.name.clone(),
        })
    }

    /// Makes sure `topic` exists (a no-op without `create_topics`: the
    /// broker then auto-creates it or the first delivery fails).
    pub async fn ensure(&mut self, topic: &str) -> Result<(), SinkError> {
        if !self.all {
            return Ok(());
        }
        let config = self.config.clone();
        self.create(topic, self.partitions, &config, Why::CreateTopics)
            .await
    }

    /// Makes sure the progress topic `topic` exists: one partition (its
    /// records are read back in order), compacted (one record per key
    /// survives; `topic_config` is for the change topics and does not
    /// apply). A no-op when neither `create_topics` nor
    /// `create_progress_topic` is on: reading it then reports a missing
    /// topic.
    pub async fn ensure_progress(&mut self, topic: &str) -> Result<(), SinkError> {
        if !self.all && !self.progress {
            return Ok(());
        }
        if self.done.contains(topic) {
            return Ok(());
        }
        // Only when missing: a broker that does not let pgbridge create
        // topics (or does not implement CreateTopics) is no obstacle when
        // an administrator made the topic.
        if self.listed(topic).await? {
            self.done.insert(topic.to_string());
            return Ok(());
        }
        let why = if self.all {
            Why::CreateTopics
        } else {
            Why::Progress
        };
        let config = [("cleanup.policy".to_string(), "compact".to_string())];
        self.create(topic, 1, &config, why).await
    }

    /// Whether the brokers' metadata lists `topic`.
    async fn listed(&self, topic: &str) -> Result<bool, SinkError> {
        let client = self.client.clone();
        let name = topic.to_string();
        let r = tokio::task::spawn_blocking(move || -> Result<bool, String> {
            let consumer: BaseConsumer = client.create().map_err(|e| e.to_string())?;
            let md = consumer
                .fetch_metadata(Some(&name), Duration::from_secs(30))
                .map_err(|e| e.to_string())?;
            Ok(md
                .topics()
                .iter()
                .any(|t| t.name() == name && t.error().is_none() && !t.partitions().is_empty()))
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
        r.map_err(|e| SinkError::transient(&self.sink, format!("looking up topic {topic}: {e}")))
    }

    async fn create(
        &mut self,
        topic: &str,
        partitions: i32,
        config: &[(String, String)],
        why: Why,
    ) -> Result<(), SinkError> {
        let Some(admin) = &self.admin else {
            return Ok(());
        };
        if self.done.contains(topic) {
            return Ok(());
        }
        let mut nt = NewTopic::new(topic, partitions, TopicReplication::Fixed(self.replication));
        for (k, v) in config {
            nt = nt.set(k, v);
        }
        let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(30)));
        let results = admin.create_topics([&nt], &opts).await.map_err(|e| {
            SinkError::transient(&self.sink, format!("creating topic {topic}: {e}"))
        })?;
        for r in results {
            match r {
                Ok(_) => tracing::info!(sink = %self.sink, topic, partitions, "created topic"),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((_, code)) => {
                    return Err(refused(
                        &self.sink,
                        topic,
                        partitions,
                        self.replication,
                        config,
                        why,
                        code,
                    ))
                }
            }
        }
        self.done.insert(topic.to_string());
        Ok(())
    }
}

/// The error for a broker's refusal to create `topic`: definite when
/// retrying cannot help (authorization, policy, invalid settings), with
/// the fix for the setting that asked for the topic.
fn refused(
    sink: &str,
    topic: &str,
    partitions: i32,
    replication: i32,
    config: &[(String, String)],
    why: Why,
    code: RDKafkaErrorCode,
) -> SinkError {
    let definite = matches!(
        code,
        RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::ClusterAuthorizationFailed
            | RDKafkaErrorCode::PolicyViolation
            | RDKafkaErrorCode::InvalidReplicationFactor
            | RDKafkaErrorCode::InvalidPartitions
            | RDKafkaErrorCode::InvalidConfig
            | RDKafkaErrorCode::InvalidTopic
    );
    let fix = match why {
        Why::CreateTopics => "create it yourself and set create_topics = false, or fix \
                              topic_partitions / topic_replication_factor / topic_config"
            .to_string(),
        Why::Progress => format!(
            "it is this sink's progress topic: create it yourself (1 partition, \
             cleanup.policy=compact) and set create_progress_topic = false, or fix \
             topic_replication_factor (asked for {})",
            config
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let message = format!(
        "cannot create topic {topic} ({partitions} partitions, replication factor \
         {replication}): {code}; {fix}"
    );
    if definite {
        SinkError::definite(sink, message)
    } else {
        SinkError::transient(sink, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pgoutput::ReplicaIdentity;

    fn rel(schema: &str, name: &str) -> RelationSchema {
        RelationSchema {
            rel_id: 1,
            schema: schema.into(),
            name: name.into(),
            replica_identity: ReplicaIdentity::Default,
            columns: vec![],
        }
    }

    #[test]
    fn templates_and_overrides() {
        let mut cfg = KafkaSinkSection::new("cdc", "k:9092");
        cfg.topic = "app.{schema}.{table}".into();
        cfg.table_topics
            .insert("orders".into(), "orders-{schema}".into());
        assert_eq!(table_topic(&cfg, &rel("public", "orders")), "orders-public");
        assert_eq!(
            table_topic(&cfg, &rel("Sales Dept", "línea")),
            "app.Sales_Dept.l_nea"
        );
        let long = "x".repeat(300);
        assert_eq!(table_topic(&cfg, &rel("s", &long)).len(), 249);
    }

    #[test]
    fn a_refused_progress_topic_names_the_key_to_turn_off() {
        let compact = [("cleanup.policy".to_string(), "compact".to_string())];
        let e = refused(
            "cdc",
            "_pgbridge_progress",
            1,
            3,
            &compact,
            Why::Progress,
            RDKafkaErrorCode::TopicAuthorizationFailed,
        );
        let m = e.to_string();
        assert!(!e.is_transient(), "{m}");
        assert!(
            m.contains(
                "cannot create topic _pgbridge_progress (1 partitions, replication factor 3)"
            ) && m.contains("create_progress_topic = false")
                && m.contains("cleanup.policy=compact"),
            "{m}"
        );
        // A broker that is not ready yet is retried.
        let e = refused(
            "cdc",
            "t",
            3,
            -1,
            &[],
            Why::CreateTopics,
            RDKafkaErrorCode::NotController,
        );
        assert!(e.is_transient());
        assert!(e.to_string().contains("set create_topics = false"), "{e}");
    }
}
