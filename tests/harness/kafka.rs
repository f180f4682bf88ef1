//! Kafka in the tests: a tansu broker per test, and reading topics back
//! as a consumer keeping the tables would.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientConfig;
use serde_json::Value as Json;
use tempfile::TempDir;

use super::run::signal;
use super::tansu::Broker;

/// A tansu broker for one test, killed on drop; its log is in a temporary
/// directory that goes with it.
pub struct Tansu {
    broker: Broker,
    pub addr: String,
    _dir: TempDir,
}

impl Tansu {
    pub fn start() -> Tansu {
        let dir = tempfile::tempdir().expect("tempdir");
        let broker =
            Broker::launch(&dir.path().join("tansu.log")).unwrap_or_else(|e| panic!("{e}"));
        Tansu {
            addr: broker.addr.clone(),
            broker,
            _dir: dir,
        }
    }

    /// The broker's process id.
    pub fn pid(&self) -> u32 {
        self.broker.pid()
    }

    /// SIGSTOP: the broker holds its connections but answers nothing.
    pub fn pause(&self) {
        assert!(signal(self.pid(), "-STOP"), "kill -STOP tansu");
    }

    pub fn resume(&self) {
        assert!(signal(self.pid(), "-CONT"), "kill -CONT tansu");
    }
}

#[derive(Debug, Clone)]
pub struct Rec {
    pub partition: i32,
    /// The record's timestamp (CreateTime: when the producer made it), ms.
    pub timestamp: Option<i64>,
    pub key: Option<Json>,
    pub value: Option<Json>,
    pub raw_key: Option<Vec<u8>>,
    pub raw_value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl Rec {
    pub fn header_json(&self, name: &str) -> Option<Json> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.as_ref())
            .and_then(|v| serde_json::from_slice(v).ok())
    }
}

/// Every record of `topic` (all partitions, from the beginning, to the end).
pub fn consume(brokers: &str, topic: &str, committed_only: bool) -> Vec<Rec> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "pgbridge-test-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set(
            "isolation.level",
            if committed_only {
                "read_committed"
            } else {
                "read_uncommitted"
            },
        )
        .create()
        .expect("consumer");
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let parts: Vec<i32> = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .unwrap_or_default();
    if parts.is_empty() {
        return Vec::new(); // not created yet
    }
    let mut tpl = TopicPartitionList::new();
    for p in &parts {
        tpl.add_partition_offset(topic, *p, Offset::Beginning)
            .expect("tpl");
    }
    consumer.assign(&tpl).expect("assign");
    let mut eof = std::collections::HashSet::new();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while eof.len() < parts.len() {
        assert!(Instant::now() < deadline, "reading {topic} to its end");
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(p))) => {
                eof.insert(p);
            }
            Some(Err(e)) => panic!("consuming {topic}: {e}"),
            Some(Ok(m)) => {
                eof.remove(&m.partition());
                let parse = |b: Option<&[u8]>| b.and_then(|b| serde_json::from_slice(b).ok());
                out.push(Rec {
                    partition: m.partition(),
                    timestamp: m.timestamp().to_millis(),
                    key: parse(m.key()),
                    value: parse(m.payload()),
                    raw_key: m.key().map(|k| k.to_vec()),
                    raw_value: m.payload().map(|v| v.to_vec()),
                    headers: m
                        .headers()
                        .map(|h| {
                            h.iter()
                                .map(|h| (h.key.to_string(), h.value.map(|v| v.to_vec())))
                                .collect()
                        })
                        .unwrap_or_default(),
                });
            }
        }
    }
    out
}

/// Replays change events per partition, as a consumer keeping a table would.
pub fn reconstruct(recs: &[Rec]) -> BTreeMap<String, Json> {
    let mut parts: BTreeMap<i32, BTreeMap<String, Json>> = BTreeMap::new();
    for r in recs {
        let state = parts.entry(r.partition).or_default();
        let Some(v) = &r.value else {
            continue; // tombstone
        };
        match v["op"].as_str() {
            Some("c" | "u" | "r") => {
                let key = r.key.as_ref().expect("a key").to_string();
                let mut after = v["after"].clone();
                // Unchanged TOAST columns keep their previous value.
                if let (Some(list), Some(prev)) = (v["unchanged_toast"].as_array(), state.get(&key))
                {
                    for c in list {
                        if let Some(c) = c.as_str() {
                            after[c] = prev[c].clone();
                        }
                    }
                }
                state.insert(key, after);
            }
            Some("d") => {
                state.remove(&r.key.as_ref().expect("a key").to_string());
            }
            Some("t") => state.clear(),
            other => panic!("unexpected op {other:?} in {v}"),
        }
    }
    parts.into_values().flatten().collect()
}
