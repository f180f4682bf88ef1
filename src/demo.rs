//! `pgbridge demo`: a throwaway source cluster on the local PostgreSQL
//! binaries, a small workload, and its decoded changes printed by `tail`,
//! then a check that every operation of the workload came out.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::Write;
use std::sync::{Arc, Mutex};

use crate::cluster::{ClusterError, ClusterOptions, LocalCluster};
use crate::source::{ConnInfo, Connection, Mode, SourceError};
use crate::tail::{self, TailError, TailOptions};

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Tail(#[from] TailError),
    #[error("demo check failed: {0}")]
    Check(String),
}

const END_PREFIX: &str = "pgbridge-demo-end";

/// Copies tail's output to stdout and counts operations per table.
#[derive(Clone, Default)]
struct Recorder {
    counts: Arc<Mutex<BTreeMap<String, u64>>>,
    done: Arc<tokio::sync::Notify>,
    line: Vec<u8>,
}

impl Write for Recorder {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        std::io::stdout().write_all(buf)?;
        for &b in buf {
            if b == b'\n' {
                let line = std::mem::take(&mut self.line);
                if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&line) {
                    let op = v["op"].as_str().unwrap_or("?").to_string();
                    if op == "m" && v["message"]["prefix"] == END_PREFIX {
                        self.done.notify_one();
                        continue;
                    }
                    let table = v["source"]["table"].as_str().unwrap_or("-");
                    if let Ok(mut c) = self.counts.lock() {
                        *c.entry(format!("{table} {op}")).or_default() += 1;
                    }
                }
            } else {
                self.line.push(b);
            }
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stdout().flush()
    }
}

const SETUP: &str = "
CREATE TABLE customers (id serial PRIMARY KEY, name text NOT NULL, email text);
CREATE TABLE orders (id bigserial PRIMARY KEY, customer_id int NOT NULL, amount numeric(12,2),
                     placed_at timestamptz DEFAULT now(), tags text[], note jsonb);
CREATE PUBLICATION demo_pub FOR TABLE customers, orders;";

const WORKLOAD: &[&str] = &[
    "INSERT INTO customers (name, email) VALUES ('Ada', 'ada@example.com'), ('Grace', 'grace@example.com')",
    "INSERT INTO orders (customer_id, amount, tags, note) VALUES (1, 19.99, '{new,web}', '{\"gift\": true}')",
    "BEGIN; INSERT INTO orders (customer_id, amount) SELECT 2, g * 1.25 FROM generate_series(1, 20) g; COMMIT",
    "UPDATE customers SET email = 'ada@lovelace.dev' WHERE id = 1",
    "UPDATE orders SET amount = amount + 0.01 WHERE id <= 3",
    "DELETE FROM orders WHERE id = 2",
    "BEGIN; INSERT INTO customers (name) VALUES ('rolled back'); ROLLBACK",
    "SELECT pg_logical_emit_message(true, 'demo', 'hello from a transaction')",
    "TRUNCATE orders",
];

/// (table op, count) the workload must produce.
const EXPECTED: &[(&str, u64)] = &[
    ("customers c", 2),
    ("customers u", 1),
    ("orders c", 21),
    ("orders u", 3),
    ("orders d", 1),
    ("orders t", 1),
    ("- m", 1),
];

pub async fn run(shutdown: impl Future<Output = ()>) -> Result<(), DemoError> {
    eprintln!("pgbridge demo: starting a throwaway PostgreSQL cluster (wal_level = logical)...");
    let cluster = tokio::task::spawn_blocking(|| LocalCluster::start(&ClusterOptions::default()))
        .await
        .map_err(|e| DemoError::Check(e.to_string()))??;
    let url = cluster.url("postgres", "postgres");
    let info = ConnInfo::parse(&url).map_err(SourceError::from)?;
    let mut sql = Connection::connect(&info, Mode::Normal).await?;
    sql.simple_query(SETUP).await?;
    eprintln!(
        "pgbridge demo: source at {url}, publication demo_pub; streaming with `pgbridge tail`:"
    );

    let recorder = Recorder::default();
    let done = recorder.done.clone();
    let counts = recorder.counts.clone();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let tail_opts = TailOptions::new(&url, vec!["demo_pub".into()]);
    let tail_task = tokio::spawn(async move {
        let mut out = recorder;
        tail::run(tail_opts, &mut out, async {
            let _ = stop_rx.await;
        })
        .await
    });

    // Wait for tail's slot before writing, so the workload is all after it.
    for _ in 0..100 {
        let r = sql
            .query_one("SELECT count(*) FROM pg_replication_slots WHERE active")
            .await?;
        if r.rows.first().and_then(|r| r[0].as_deref()) == Some("1") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    for stmt in WORKLOAD {
        sql.simple_query(stmt).await?;
    }
    sql.simple_query(&format!(
        "SELECT pg_logical_emit_message(false, '{END_PREFIX}', 'done')"
    ))
    .await?;

    tokio::pin!(shutdown);
    let finished = tokio::select! {
        _ = done.notified() => true,
        _ = tokio::time::sleep(std::time::Duration::from_secs(30)) => false,
        _ = &mut shutdown => false,
    };
    let _ = stop_tx.send(());
    let summary = tail_task
        .await
        .map_err(|e| DemoError::Check(e.to_string()))??;
    sql.close().await;
    drop(cluster);
    if !finished {
        return Err(DemoError::Check(
            "the workload's changes did not all arrive within 30 s".into(),
        ));
    }

    let got = counts.lock().map(|c| c.clone()).unwrap_or_default();
    let mut ok = true;
    eprintln!(
        "\npgbridge demo: check\n  {:<14} {:>8} {:>8}",
        "table op", "expected", "got"
    );
    for (key, want) in EXPECTED {
        let have = got.get(*key).copied().unwrap_or(0);
        ok &= have == *want;
        eprintln!(
            "  {key:<14} {want:>8} {have:>8}{}",
            if have == *want { "" } else { "  MISMATCH" }
        );
    }
    let unexpected: Vec<_> = got
        .keys()
        .filter(|k| !EXPECTED.iter().any(|(e, _)| e == k))
        .collect();
    if !unexpected.is_empty() {
        ok = false;
        eprintln!("  unexpected events: {unexpected:?}");
    }
    eprintln!(
        "  {} transactions, confirmed up to {} on slot {}",
        summary.transactions, summary.confirmed, summary.slot
    );
    if ok {
        eprintln!("pgbridge demo: OK, every change of the workload arrived exactly once");
        Ok(())
    } else {
        Err(DemoError::Check(
            "event counts differ from the workload".into(),
        ))
    }
}
