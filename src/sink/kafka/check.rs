//! `pgbridge check` and `pgbridge status` for a Kafka sink.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};

use super::config::{Format, KafkaSinkSection};
use super::eos::{self, ReadError};
use super::registry::Registry;

const TIMEOUT: Duration = Duration::from_secs(10);

/// One line per problem: the brokers answer, the topics of
/// `message_topic` / `transaction_topic` / the progress topic (used by
/// exactly-once and, with `copies`, by the initial copy's completion
/// records; created by the sink unless `create_progress_topic = false`)
/// exist or will be created, the schema registry answers.
pub async fn preflight(cfg: &KafkaSinkSection, copies: bool) -> Vec<String> {
    let mut problems = Vec::new();
    let name = cfg.name.clone();
    let c = cfg.clone();
    let md = tokio::task::spawn_blocking(move || -> Result<Vec<String>, String> {
        let consumer: BaseConsumer = c.client_config().create().map_err(|e| e.to_string())?;
        let md = consumer
            .fetch_metadata(None, TIMEOUT)
            .map_err(|e| format!("brokers {} do not answer: {e}", c.brokers))?;
        Ok(md.topics().iter().map(|t| t.name().to_string()).collect())
    })
    .await
    .unwrap_or_else(|e| Err(e.to_string()));
    match md {
        Err(e) => problems.push(format!("sink {name}: {e}")),
        Ok(topics) if !cfg.create_topics => {
            let mut wanted: Vec<(&str, &str)> = cfg
                .message_topic
                .iter()
                .chain(cfg.transaction_topic.iter())
                .chain(cfg.schema_change_topic.iter())
                .map(|t| (t.as_str(), "create it or set create_topics = true"))
                .collect();
            // The sink creates its progress topic itself unless told not to.
            if (cfg.exactly_once || copies) && !cfg.create_progress_topic {
                wanted.push((
                    &cfg.progress_topic,
                    "create it (1 partition, cleanup.policy=compact) or set \
                     create_progress_topic = true",
                ));
            }
            for (t, fix) in wanted {
                if !topics.iter().any(|x| x == t) {
                    problems.push(format!("sink {name}: topic {t} does not exist; {fix}"));
                }
            }
        }
        Ok(_) => {}
    }
    if let (Format::Avro, Some(r)) = (cfg.format, &cfg.schema_registry) {
        if let Err(e) = Registry::new(r) {
            problems.push(format!("sink {name}: {e}"));
        }
    }
    problems
}

/// The sink's position, for `pgbridge status`.
pub async fn status(cfg: &KafkaSinkSection, pipeline: &str) -> String {
    let name = cfg.name.clone();
    if !cfg.exactly_once {
        return format!(
            "sink {name}: kafka {} (at-least-once: the slot's confirmed position is the sink's)",
            cfg.brokers
        );
    }
    let c = cfg.clone();
    let tid = cfg.transactional_id(pipeline);
    let r = tokio::task::spawn_blocking(move || eos::read_progress(&c, &tid, TIMEOUT)).await;
    match r {
        Ok(Ok(l)) => format!("sink {name}: kafka, committed up to {l} (exactly once)"),
        Ok(Err(ReadError::Missing)) => format!("sink {name}: kafka, nothing committed yet"),
        Ok(Err(ReadError::Kafka(e) | ReadError::Corrupt(e))) => {
            format!("sink {name}: kafka, position unknown: {e}")
        }
        Err(e) => format!("sink {name}: kafka, position unknown: {e}"),
    }
}
