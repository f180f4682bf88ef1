//! kafka: the backlog again, into a tansu broker: the drain limit, a naive
//! wal2json-to-Python peer and pgbridge with one Kafka sink. Also the
//! broker's bench-side helpers (topics, record counts, CPU).

use std::time::{Duration, Instant};

use crate::contenders::{pgbridge, recvlogical};
use crate::cpu::proc_stat;
use crate::db::Db;
use crate::env::{drop_slots, settle, Env};
use crate::harness::tansu::Broker;
use crate::report::Report;
use crate::scenarios::backlog::{write_backlog, BL_TABLE};
use crate::R;

impl Broker {
    /// A broker for one measured run, its log in the bench's directory.
    pub fn start(env: &Env, name: &str) -> R<Broker> {
        Broker::launch(&env.tmp.path().join(format!("{name}.tansu.log")))
    }

    /// CPU seconds the broker used so far.
    pub fn cpu(&self, ticks: f64) -> f64 {
        proc_stat(self.pid())
            .map(|(_, t)| t as f64 / ticks)
            .unwrap_or(0.0)
    }

    /// Creates `topic` with one partition.
    pub async fn create_topic(&self, topic: &str) -> R<()> {
        use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
        use rdkafka::client::DefaultClientContext;
        let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &self.addr)
            .create()
            .map_err(|e| format!("admin client: {e}"))?;
        let r = admin
            .create_topics(
                &[NewTopic::new(topic, 1, TopicReplication::Fixed(-1))],
                &AdminOptions::new(),
            )
            .await
            .map_err(|e| format!("creating topic {topic}: {e}"))?;
        for t in r {
            t.map_err(|(name, e)| format!("creating topic {name}: {e}"))?;
        }
        Ok(())
    }

    /// Records in `topic` as the watermarks say; when that is not `want`,
    /// again a few seconds later, then by reading every record. (tansu
    /// 0.6's ListOffsets answers a high watermark some hundred records
    /// short of the log end after large produce runs, and stays there;
    /// reading finds every record. Apache Kafka's is exact.)
    pub async fn count_checked(&self, topic: &str, want: u64) -> R<u64> {
        let n = self.count(topic).await?;
        if n == want {
            return Ok(n);
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        let again = self.count(topic).await?;
        let read = self.read_all(topic).await?;
        eprintln!("  {topic}: watermarks say {n}, 3 s later {again}, reading finds {read}; expected {want}");
        Ok(read)
    }

    /// Records in `topic`, by reading all of them.
    async fn read_all(&self, topic: &str) -> R<u64> {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        use rdkafka::error::KafkaError;
        use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
        let (addr, topic) = (self.addr.clone(), topic.to_string());
        tokio::task::spawn_blocking(move || -> R<u64> {
            let c: BaseConsumer = rdkafka::ClientConfig::new()
                .set("bootstrap.servers", &addr)
                .set("group.id", "pgbridge-bench-read")
                .set("enable.partition.eof", "true")
                .create()
                .map_err(|e| format!("consumer: {e}"))?;
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(&topic, 0, Offset::Beginning)
                .map_err(|e| e.to_string())?;
            c.assign(&tpl).map_err(|e| e.to_string())?;
            let mut n = 0u64;
            let deadline = Instant::now() + Duration::from_secs(600);
            while Instant::now() < deadline {
                match c.poll(Duration::from_secs(5)) {
                    Some(Ok(_)) => n += 1,
                    Some(Err(KafkaError::PartitionEOF(_))) => return Ok(n),
                    Some(Err(e)) => return Err(format!("reading {topic}: {e}")),
                    None => {}
                }
            }
            Err(format!("reading {topic}: no end after {n} records"))
        })
        .await
        .map_err(|e| format!("read task: {e}"))?
    }

    /// Records in `topic`: the high minus the low watermark of every partition.
    pub async fn count(&self, topic: &str) -> R<u64> {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let (addr, topic) = (self.addr.clone(), topic.to_string());
        tokio::task::spawn_blocking(move || -> R<u64> {
            let c: BaseConsumer = rdkafka::ClientConfig::new()
                .set("bootstrap.servers", &addr)
                .set("group.id", "pgbridge-bench")
                .create()
                .map_err(|e| format!("consumer: {e}"))?;
            let timeout = Duration::from_secs(30);
            let md = c
                .fetch_metadata(Some(&topic), timeout)
                .map_err(|e| format!("metadata of {topic}: {e}"))?;
            let parts: Vec<i32> = md
                .topics()
                .iter()
                .find(|t| t.name() == topic)
                .map(|t| t.partitions().iter().map(|p| p.id()).collect())
                .unwrap_or_default();
            if parts.is_empty() {
                return Err(format!("topic {topic} does not exist"));
            }
            let mut n = 0;
            for p in parts {
                let (lo, hi) = c
                    .fetch_watermarks(&topic, p, timeout)
                    .map_err(|e| format!("watermarks of {topic}/{p}: {e}"))?;
                n += (hi - lo).max(0) as u64;
            }
            Ok(n)
        })
        .await
        .map_err(|e| format!("count task: {e}"))?
    }
}

/// The kafka part.
pub async fn run(env: &Env, report: &mut Report) -> R<()> {
    env.src_admin.exec("CREATE DATABASE ksrc").await?;
    let src = Db::connect(&env.src_url("ksrc")).await?;
    src.exec(&format!("{BL_TABLE}; CREATE PUBLICATION p FOR TABLE bl;"))
        .await?;
    let runs = env.args.runs;
    for run in 1..=runs {
        for (slot, plugin) in [
            ("krecv", "pgoutput"),
            ("kw2j", "wal2json"),
            ("kpgbridge", "pgoutput"),
        ] {
            src.exec(&format!(
                "SELECT pg_create_logical_replication_slot('{slot}_{run}', '{plugin}')"
            ))
            .await?;
        }
    }
    let w = write_backlog(&src, env.args.scale, false).await?;
    report
        .headers
        .push(format!("kafka: the backlog again: {}", w.header()));
    report.headers.push(
        "  to a tansu broker on this machine (memory store, a fresh one per run, 1 partition); \
         pg_recvlogical: pgoutput to /dev/null (the limit); wal2json+python: pg_recvlogical \
         --plugin wal2json (format-version 2) | a confluent-kafka producer (acks=all, idempotent, \
         lz4, linger 10 ms) line by line, until both exit; pgbridge: run with one Kafka sink \
         (its defaults: JSON, lz4), until the slot confirms the end (every record acknowledged)"
            .into(),
    );
    let jobs = ["pg_recvlogical", "wal2json+python", "pgbridge"];
    for run in 1..=runs {
        for k in 0..jobs.len() {
            let who = jobs[(k + run - 1) % jobs.len()];
            settle(env).await?;
            eprintln!("kafka run {run}/{runs}: {who}");
            let r = match who {
                "pg_recvlogical" => {
                    recvlogical::drain(env, "ksrc", &format!("krecv_{run}"), &w.end).await
                }
                "wal2json+python" => {
                    recvlogical::wal2json_kafka(env, &format!("kw2j_{run}"), &w).await
                }
                _ => pgbridge::kafka(env, &src, &format!("kpgbridge_{run}"), &w).await,
            };
            report.add("kafka", "-", who, r);
        }
    }
    drop(src);
    drop_slots(env, "ksrc").await?;
    env.src_admin
        .exec("DROP DATABASE ksrc WITH (FORCE)")
        .await?;
    Ok(())
}
