//! Routing (which topic a table's events go to) and topic creation.

use std::collections::HashSet;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
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

/// Creates missing topics (once per topic per run) when `create_topics`.
pub struct TopicMaker {
    admin: Option<AdminClient<DefaultClientContext>>,
    partitions: i32,
    replication: i32,
    config: Vec<(String, String)>,
    done: HashSet<String>,
    sink: String,
}

impl TopicMaker {
    pub fn new(cfg: &KafkaSinkSection) -> Result<TopicMaker, SinkError> {
        let admin = if cfg.create_topics {
            Some(
                cfg.client_config()
                    .create()
                    .map_err(|e| SinkError::Definite {
                        sink: cfg.name.clone(),
                        message: format!("cannot create the Kafka admin client: {e}"),
                    })?,
            )
        } else {
            None
        };
        Ok(TopicMaker {
            admin,
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
        let config = self.config.clone();
        self.ensure_with(topic, self.partitions, &config).await
    }

    /// Like [`TopicMaker::ensure`] with explicit partitions and configs.
    pub async fn ensure_with(
        &mut self,
        topic: &str,
        partitions: i32,
        config: &[(String, String)],
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
        let results =
            admin
                .create_topics([&nt], &opts)
                .await
                .map_err(|e| SinkError::Transient {
                    sink: self.sink.clone(),
                    message: format!("creating topic {topic}: {e}"),
                })?;
        for r in results {
            match r {
                Ok(_) => tracing::info!(sink = %self.sink, topic, partitions, "created topic"),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((_, code)) => {
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
                    let message = format!(
                        "cannot create topic {topic} ({partitions} partitions, replication \
                         factor {}): {code}; create it yourself and set create_topics = false, \
                         or fix topic_partitions / topic_replication_factor / topic_config",
                        self.replication
                    );
                    return Err(if definite {
                        SinkError::Definite {
                            sink: self.sink.clone(),
                            message,
                        }
                    } else {
                        SinkError::Transient {
                            sink: self.sink.clone(),
                            message,
                        }
                    });
                }
            }
        }
        self.done.insert(topic.to_string());
        Ok(())
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
}
