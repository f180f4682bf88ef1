//! A sink that pgbridge does not have, defined here, run through the real
//! `run` (initial copy, then streaming) with nothing but a registry entry:
//! the proof that adding a sink needs no change in `pipeline/`.
//!
//! The sink writes one JSON line per copied row and per streamed change
//! to a file, records completed copies in `<file>.copied` and its durable
//! position in `<file>.position`.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgbridge::config::{Config, SinkConfig};
use pgbridge::encode::json::SnapshotMarker;
use pgbridge::model::json::JsonOptions;
use pgbridge::model::{Event, RelationSchema, Value};
use pgbridge::pipeline::ack::Acker;
use pgbridge::pipeline::registry::Registry;
use pgbridge::sink::{Copier, Destination, RowCopier, Sink, SinkError, SinkItem, SinkQueue};
use pgbridge::source::published::TableSpec;
use pgbridge::Lsn;
use serde_json::{json, Value as Json};

use crate::harness::{fresh_db, psql, runtime, url};

pub fn trials() -> Vec<libtest_mimic::Trial> {
    vec![crate::trial(
        "custom_sink::copies_then_streams_through_run",
        copies_then_streams_through_run,
    )]
}

/// The test's sink: JSON lines in a file.
struct FileSink {
    name: String,
    path: PathBuf,
}

fn sidecar(path: &Path, ext: &str) -> PathBuf {
    path.with_extension(ext)
}

fn append(path: &Path, sink: &str, line: &Json) -> Result<(), SinkError> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| SinkError::transient(sink, format!("opening {}: {e}", path.display())))?;
    writeln!(f, "{line}")
        .and_then(|()| f.sync_data())
        .map_err(|e| SinkError::transient(sink, format!("writing {}: {e}", path.display())))
}

fn values(values: &[Value]) -> Json {
    Json::Array(
        values
            .iter()
            .map(|v| v.to_json(&JsonOptions::default()).unwrap_or(Json::Null))
            .collect(),
    )
}

/// Builds a [`FileSink`] from its section: `path` is its file.
fn file_sink(section: &SinkConfig, _: &Config) -> Result<Box<dyn Destination>, SinkError> {
    let SinkConfig::Other(o) = section else {
        return Err(SinkError::definite(section.name(), "not a jsonl section"));
    };
    let path = o
        .settings
        .get("path")
        .and_then(|p| p.as_str())
        .ok_or_else(|| SinkError::definite(&o.name, "path is required"))?;
    Ok(Box::new(FileSink {
        name: o.name.clone(),
        path: PathBuf::from(path),
    }))
}

#[async_trait::async_trait]
impl Sink for FileSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn open(&mut self) -> Result<Lsn, SinkError> {
        Ok(std::fs::read_to_string(sidecar(&self.path, "position"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(Lsn::ZERO))
    }

    async fn run(&mut self, mut queue: SinkQueue, acker: Acker) -> Result<(), SinkError> {
        while let Some(item) = queue.recv().await {
            match item {
                SinkItem::Event(ev) => {
                    if let Event::Change(c) = &*ev {
                        let row = c.new.as_ref().or(c.old.as_ref());
                        let decoded = match row {
                            Some(r) => c
                                .decode(r, c.new.is_none())
                                .map_err(|e| SinkError::definite(&self.name, e.to_string()))?,
                            None => Vec::new(),
                        };
                        let line = json!({
                            "op": c.op.letter(),
                            "table": c.relation.qualified_name(),
                            "values": values(&decoded),
                        });
                        append(&self.path, &self.name, &line)?;
                    }
                }
                SinkItem::Commit(token) => {
                    std::fs::write(sidecar(&self.path, "position"), token.end_lsn().to_string())
                        .map_err(|e| SinkError::transient(&self.name, e.to_string()))?;
                    acker
                        .ack(token)
                        .map_err(|e| SinkError::definite(&self.name, e.to_string()))?;
                }
            }
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Destination for FileSink {
    async fn copied_tables(
        &mut self,
        tables: &[TableSpec],
    ) -> Result<HashMap<u32, Lsn>, SinkError> {
        let text = std::fs::read_to_string(sidecar(&self.path, "copied")).unwrap_or_default();
        let by_name: HashMap<&str, Lsn> = text
            .lines()
            .filter_map(|l| l.split_once(' '))
            .filter_map(|(t, l)| Some((t, l.parse().ok()?)))
            .collect();
        Ok(tables
            .iter()
            .filter_map(|t| {
                by_name
                    .get(t.qualified_name().as_str())
                    .map(|l| (t.oid, *l))
            })
            .collect())
    }

    async fn copier(&mut self) -> Result<Copier<'_>, SinkError> {
        Ok(Copier::Rows(Box::new(FileCopier(self))))
    }
}

struct FileCopier<'a>(&'a mut FileSink);

#[async_trait::async_trait]
impl RowCopier for FileCopier<'_> {
    async fn begin_table(&mut self, rel: &Arc<RelationSchema>, _: Lsn) -> Result<(), SinkError> {
        let line = json!({"op": "begin_copy", "table": rel.qualified_name()});
        append(&self.0.path, &self.0.name, &line)
    }

    async fn write_row(
        &mut self,
        rel: &Arc<RelationSchema>,
        _: Lsn,
        row: &[Value],
        _: SnapshotMarker,
    ) -> Result<(), SinkError> {
        let line = json!({"op": "r", "table": rel.qualified_name(), "values": values(row)});
        append(&self.0.path, &self.0.name, &line)
    }

    async fn finish_table(&mut self, table: &str, start: Lsn, _: u64) -> Result<(), SinkError> {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(sidecar(&self.0.path, "copied"))
            .map_err(|e| SinkError::transient(&self.0.name, e.to_string()))?;
        writeln!(f, "{table} {start}")
            .map_err(|e| SinkError::transient(&self.0.name, e.to_string()))
    }

    async fn abort(&mut self) {}
}

/// The file's lines as (op, first value), in order.
fn lines(path: &Path) -> Vec<(String, Json)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let v: Json = serde_json::from_str(l).expect("a JSON line");
            (
                v["op"].as_str().unwrap_or_default().to_string(),
                v["values"][0].clone(),
            )
        })
        .collect()
}

/// Runs `pgbridge run` with the file sink registered until `done` holds
/// for the file's lines, running `then` once the copy is in.
fn run_until(
    config: &str,
    path: &Path,
    then: &str,
    db: &str,
    done: impl Fn(&[(String, Json)]) -> bool,
) {
    let mut registry = Registry::default();
    registry.register("jsonl", file_sink);
    let config = Config::parse_with_sink_types(config, "custom.toml", &registry.kinds())
        .expect("config parses");
    let rt = runtime();
    rt.block_on(async {
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let run = pgbridge::pipeline::run::run_with_registry(config, &registry, async {
            let _ = stop_rx.await;
        });
        let drive = async {
            let t0 = Instant::now();
            let mut ran = false;
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let now = lines(path);
                if !ran && std::fs::metadata(sidecar(path, "copied")).is_ok() {
                    psql(db, then);
                    ran = true;
                }
                if ran && done(&now) {
                    break;
                }
                assert!(
                    t0.elapsed() < Duration::from_secs(60),
                    "timed out; the file has {now:?}"
                );
            }
            let _ = stop_tx.send(());
        };
        let (r, ()) = tokio::join!(run, drive);
        r.expect("run stops cleanly");
    });
}

fn copies_then_streams_through_run() {
    let (port, db) = fresh_db("custom_sink");
    psql(
        &db,
        "CREATE TABLE t (id int PRIMARY KEY, v text); \
         CREATE TABLE other (id int PRIMARY KEY); \
         INSERT INTO t VALUES (1, 'a'), (2, 'b'), (3, 'c'); \
         INSERT INTO other VALUES (1); \
         CREATE PUBLICATION cpub FOR TABLE t, other;",
    );
    let dir = std::env::temp_dir().join(format!("pgbridge-custom-sink-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("out.jsonl");
    let config = format!(
        "[source]\nurl = \"{}\"\nslot = \"custom_sink\"\npublications = [\"cpub\"]\n\n\
         [[sink]]\nname = \"file\"\ntype = \"jsonl\"\npath = \"{}\"\ntables = [\"public.t\"]\n",
        url(port, &db),
        path.display()
    );
    run_until(
        &config,
        &path,
        "INSERT INTO t VALUES (4, 'd'); UPDATE t SET v = 'x' WHERE id = 1; \
         DELETE FROM t WHERE id = 2; INSERT INTO other VALUES (2);",
        &db,
        |l| l.iter().any(|(op, _)| op == "d"),
    );
    let got = lines(&path);
    let ops: Vec<(&str, i64)> = got
        .iter()
        .map(|(op, v)| (op.as_str(), v.as_i64().unwrap_or(-1)))
        .collect();
    assert_eq!(
        ops,
        [
            ("begin_copy", -1),
            ("r", 1),
            ("r", 2),
            ("r", 3),
            ("c", 4),
            ("u", 1),
            ("d", 2),
        ],
        "the copy of the selected table, then its changes (none of the other table)"
    );
    // A second run neither copies again (the sink said the table is
    // complete) nor repeats what it acknowledged.
    run_until(&config, &path, "INSERT INTO t VALUES (5, 'e')", &db, |l| {
        l.iter().any(|(op, v)| op == "c" && v == 5)
    });
    let again: Vec<(String, Json)> = lines(&path).split_off(got.len());
    assert_eq!(again, [("c".to_string(), json!(5))]);
    psql(&db, "SELECT pg_drop_replication_slot('custom_sink')");
    let _ = std::fs::remove_dir_all(&dir);
}
