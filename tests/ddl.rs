//! Schema changes carried live (`source.capture_ddl`): the source's event
//! trigger writes each change into the stream, and the sinks follow it in
//! order with the rows.
//!
//! - Under write load (a writer thread inserting and updating on its own
//!   connection all the time), ADD COLUMN (with a default, and with a row
//!   in the same transaction), DROP COLUMN, ALTER COLUMN TYPE, RENAME
//!   COLUMN, RENAME TABLE, CREATE INDEX and DROP INDEX reach a Postgres
//!   target: afterwards its table equals the source's (rows, columns and
//!   their types) and has the index; the log names each change as applied
//!   by the schema change path. Once with 1 apply worker, once with 2.
//! - Without create_tables the sink stops naming the change and the
//!   statement; running that statement on the target lets it go on.
//! - A source user that is no superuser: `check` prints the SQL, `run`
//!   says what to do; the printed SQL, run by a superuser, installs it.
//! - A Kafka sink: records after ADD COLUMN carry the new schema, and the
//!   change is an event on `schema_change_topic`.
//! - ATTACH PARTITION is reported, naming the partition, the parent and
//!   `pgbridge backfill`.

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use libtest_mimic::Trial;

use crate::harness::bridge::{
    confirmed_to_now, log_text, spawn_run, stop_run, wait_exit, wait_streaming_logged, write_single,
};
use crate::harness::config::Config;
use crate::harness::kafka::{consume, Tansu};
use crate::harness::{self, psql};
use crate::trial;

pub fn trials() -> Vec<Trial> {
    vec![
        trial("ddl::changes_under_load", changes_under_load),
        trial(
            "ddl::changes_under_load_parallel",
            changes_under_load_parallel,
        ),
        trial(
            "ddl::stops_without_create_tables",
            stops_without_create_tables,
        ),
        trial("ddl::non_superuser_source", non_superuser_source),
        trial("ddl::kafka_schema_version_and_topic", kafka_schema_change),
        trial(
            "ddl::avro_new_version_and_refusal",
            avro_new_version_and_refusal,
        ),
        trial("ddl::partition_attach_reported", partition_attach_reported),
        trial(
            "ddl::broken_capture_never_fails_ddl",
            broken_capture_never_fails_ddl,
        ),
    ]
}

/// Row count and a hash of every row's text form.
pub(crate) fn rows(db: &str, table: &str) -> String {
    psql(
        db,
        &format!("SELECT count(*) || ':' || coalesce(sum(hashtext(t::text)), 0) FROM {table} t"),
    )
}

/// The table's columns with their types, in order.
fn columns(db: &str, table: &str) -> String {
    psql(
        db,
        &format!(
            "SELECT string_agg(attname || ' ' || format_type(atttypid, atttypmod), ', ' ORDER BY attnum) \
             FROM pg_attribute WHERE attrelid = '{table}'::regclass AND attnum > 0 AND NOT attisdropped"
        ),
    )
}

/// A writer on its own connection: inserts and updates through a view
/// (which follows the table through its renames) until stopped; counts
/// its transactions.
struct Writer {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(url: String) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let (s, d) = (stop.clone(), done.clone());
        let thread = std::thread::spawn(move || {
            let rt = harness::runtime();
            rt.block_on(async move {
                let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                    .await
                    .expect("writer connects");
                tokio::spawn(conn);
                while !s.load(Ordering::Relaxed) {
                    client
                        .batch_execute(
                            "INSERT INTO w DEFAULT VALUES; INSERT INTO w DEFAULT VALUES; \
                             UPDATE w SET id = id WHERE id = (SELECT max(id) - 5 FROM w)",
                        )
                        .await
                        .expect("writer writes");
                    d.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(3)).await;
                }
            })
        });
        Writer {
            stop,
            done,
            thread: Some(thread),
        }
    }

    /// Waits until it wrote `n` more transactions.
    fn wait_more(&self, n: u64) {
        let start = self.done.load(Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.done.load(Ordering::Relaxed) < start + n {
            assert!(Instant::now() < deadline, "the writer stalled");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().expect("writer thread");
        }
        self.done.load(Ordering::Relaxed)
    }
}

/// Each schema change, then the writer's rows after it.
const CHANGES: &[(&str, &str)] = &[
    (
        "ALTER TABLE t ADD COLUMN c int DEFAULT 7; INSERT INTO t (a, c) VALUES ('after add', 42)",
        "add column c integer",
    ),
    (
        "ALTER TABLE t ADD COLUMN d text; INSERT INTO t (a, d) VALUES ('same txn', 'dval')",
        "add column d text",
    ),
    ("ALTER TABLE t DROP COLUMN b", "drop column b"),
    (
        "ALTER TABLE t ALTER COLUMN c TYPE bigint; UPDATE t SET c = 5000000000 WHERE a = 'after add'",
        "column c type integer -> bigint",
    ),
    ("ALTER TABLE t RENAME COLUMN a TO a2", "rename column a to a2"),
    ("ALTER TABLE t RENAME TO t2", "rename table public.t to public.t2"),
    ("CREATE INDEX t2_c ON t2 (c)", "create index t2_c"),
    ("CREATE INDEX t2_x ON t2 (a2)", "create index t2_x"),
    ("DROP INDEX t2_x", "drop index t2_x"),
];

fn load_test(name: &str, workers: usize) {
    let (port, src) = harness::fresh_db(&format!("{name}_src"));
    let (_, dst) = harness::fresh_db(&format!("{name}_dst"));
    psql(
        &src,
        "CREATE TABLE t (id int GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, a text DEFAULT 'w', b int DEFAULT 1);
         CREATE VIEW w AS SELECT id FROM t;
         INSERT INTO t (a, b) SELECT 'r' || g, g FROM generate_series(1, 500) g;
         CREATE PUBLICATION p FOR TABLE t;",
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("pgbridge.toml");
    let log = dir.path().join("run.log");
    write_single(
        &config,
        &harness::url(port, &src),
        name,
        "initial",
        &harness::url(port, &dst),
        &format!("create_tables = true\napply_workers = {workers}\n"),
    );
    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(
        &config,
        text.replacen("[source]\n", "[source]\ncapture_ddl = true\n", 1),
    )
    .expect("config");
    let run = spawn_run(&config, &log);
    wait_streaming_logged(name, &log);
    let writer = Writer::start(harness::url(port, &src));
    writer.wait_more(20);
    for (sql, _) in CHANGES {
        psql(&src, sql);
        writer.wait_more(20);
    }
    let written = writer.stop();
    confirmed_to_now(&src, name, &log, 90);
    let text = log_text(&log);
    assert!(
        psql(&dst, "SELECT to_regclass('public.t') IS NULL") == "t",
        "{text}"
    );
    assert_eq!(columns(&dst, "t2"), columns(&src, "t2"), "{text}");
    assert_eq!(rows(&dst, "t2"), rows(&src, "t2"), "{text}");
    assert_eq!(
        psql(
            &dst,
            "SELECT coalesce(c::text, '') || ',' || coalesce(d, '') FROM t2 WHERE a2 IN ('same txn', 'after add') ORDER BY a2"
        )
        .replace('\n', " "),
        "5000000000, 7,dval",
        "rows right after ADD COLUMN carry the new column's values"
    );
    assert_eq!(
        psql(
            &dst,
            "SELECT to_regclass('public.t2_c') IS NOT NULL AND to_regclass('public.t2_x') IS NULL"
        ),
        "t",
        "indexes follow the source"
    );
    for (_, change) in CHANGES {
        assert!(
            text.contains(&format!("change={change}")) || text.contains(change),
            "the log does not show {change:?} applied:\n{text}"
        );
    }
    eprintln!(
        "{name}: {written} writer transactions around {} schema changes",
        CHANGES.len()
    );
    assert!(stop_run(run).success(), "{}", log_text(&log));
}

fn changes_under_load() {
    load_test("ddl_load", 1);
}

fn changes_under_load_parallel() {
    load_test("ddl_load2", 2);
}

/// Without create_tables a schema change the target still needs stops the
/// sink naming the change and the statement; run that statement on the
/// target and start again, and the stream goes on.
fn stops_without_create_tables() {
    let (port, src) = harness::fresh_db("ddl_stop_src");
    let (_, dst) = harness::fresh_db("ddl_stop_dst");
    let table = "CREATE TABLE t (id int PRIMARY KEY, a text)";
    psql(&src, &format!("{table}; CREATE PUBLICATION p FOR TABLE t;"));
    psql(&dst, table);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("pgbridge.toml");
    let log = dir.path().join("run.log");
    Config::source(&harness::url(port, &src), "ddl_stop", &["p"])
        .key("snapshot", "\"never\"")
        .key("capture_ddl", true)
        .postgres_sink("d", &harness::url(port, &dst))
        .write(&config)
        .expect("config");
    let run = spawn_run(&config, &log);
    wait_streaming_logged("ddl_stop", &log);
    psql(&src, "INSERT INTO t VALUES (1, 'x')");
    psql(
        &src,
        "ALTER TABLE t RENAME COLUMN a TO a2; INSERT INTO t VALUES (2, 'after')",
    );
    let status = wait_exit(run, &log, "the run to stop on the schema change");
    assert!(!status.success());
    let text = log_text(&log);
    let fix = "ALTER TABLE \"public\".\"t\" RENAME COLUMN \"a\" TO \"a2\";";
    assert!(
        text.contains("rename column a to a2") && text.contains(fix),
        "{text}"
    );
    assert_eq!(psql(&dst, "SELECT count(*) FROM t"), "1", "nothing past it");
    // The advice, followed.
    psql(&dst, fix);
    let log2 = dir.path().join("run2.log");
    let run = spawn_run(&config, &log2);
    wait_streaming_logged("ddl_stop", &log2);
    confirmed_to_now(&src, "ddl_stop", &log2, 90);
    assert_eq!(rows(&dst, "t"), rows(&src, "t"), "{}", log_text(&log2));
    assert!(stop_run(run).success(), "{}", log_text(&log2));
}

/// A source user without superuser: `check` names the missing trigger and
/// prints the SQL; `run` stops saying what to do. A superuser runs the
/// printed SQL; then `check` has nothing to say about it and `run`
/// captures.
fn non_superuser_source() {
    let (port, src) = harness::fresh_db("ddl_nosu_src");
    let (_, dst) = harness::fresh_db("ddl_nosu_dst");
    psql("postgres", "CREATE ROLE ddl_nosu LOGIN REPLICATION");
    psql(
        &src,
        "CREATE TABLE t (id int PRIMARY KEY, a text);
         CREATE PUBLICATION p FOR TABLE t;
         GRANT SELECT ON t TO ddl_nosu;",
    );
    let url = format!("postgres://ddl_nosu@127.0.0.1:{port}/{src}?sslmode=disable");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("pgbridge.toml");
    let log = dir.path().join("run.log");
    Config::source(&url, "ddl_nosu", &["p"])
        .key("snapshot", "\"never\"")
        .key("capture_ddl", true)
        .postgres_sink("d", &harness::url(port, &dst))
        .key("create_tables", true)
        .write(&config)
        .expect("config");
    let check = || {
        let out = Command::new(env!("CARGO_BIN_EXE_pgbridge"))
            .args(["check", "--config"])
            .arg(&config)
            .output()
            .expect("run check");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let out = check();
    assert!(
        out.contains("event trigger pgbridge_capture_ddl is not installed")
            && out.contains("user ddl_nosu may not install it"),
        "{out}"
    );
    let begin = out.find("BEGIN;").expect("the SQL is printed");
    let end = out.find("COMMIT;").expect("the SQL ends") + "COMMIT;".len();
    let sql = &out[begin..end];
    assert!(sql.contains("CREATE EVENT TRIGGER pgbridge_capture_ddl"));

    let run = spawn_run(&config, &log);
    let status = wait_exit(run, &log, "the run to stop without the trigger");
    assert!(!status.success());
    let text = log_text(&log);
    assert!(
        text.contains("event triggers need a superuser") && text.contains("pgbridge check"),
        "{text}"
    );

    // A superuser runs what check printed.
    let file = dir.path().join("capture.sql");
    std::fs::write(&file, sql).expect("write sql");
    harness::with_cluster(|c| {
        let out = Command::new(c.bin_dir().join("psql"))
            .args([
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
            ])
            .args(["-p", &port.to_string(), "-d", &src, "-f"])
            .arg(&file)
            .output()
            .expect("psql");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
    let out = check();
    assert!(!out.contains("pgbridge_capture_ddl"), "{out}");
    let log2 = dir.path().join("run2.log");
    let run = spawn_run(&config, &log2);
    wait_streaming_logged("ddl_nosu", &log2);
    psql(&src, "INSERT INTO t VALUES (1, 'x')");
    psql(&src, "ALTER TABLE t RENAME COLUMN a TO a2");
    psql(&src, "INSERT INTO t VALUES (2, 'y')");
    confirmed_to_now(&src, "ddl_nosu", &log2, 90);
    assert_eq!(
        columns(&dst, "t"),
        columns(&src, "t"),
        "{}",
        log_text(&log2)
    );
    assert_eq!(rows(&dst, "t"), rows(&src, "t"));
    assert!(stop_run(run).success(), "{}", log_text(&log2));
}

/// A Kafka sink with Connect schemas in its JSON: the records after ADD
/// COLUMN carry the new value schema, and the change is one event on
/// `schema_change_topic`.
fn kafka_schema_change() {
    let broker = Tansu::start();
    let (port, src) = harness::fresh_db("ddl_kafka_src");
    psql(
        &src,
        "CREATE TABLE t (id int PRIMARY KEY, a text); CREATE PUBLICATION p FOR TABLE t;",
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("pgbridge.toml");
    let log = dir.path().join("run.log");
    Config::source(&harness::url(port, &src), "ddl_kafka", &["p"])
        .key("snapshot", "\"never\"")
        .key("capture_ddl", true)
        .kafka_sink("cdc", &broker.addr)
        .key("topic", "\"ddlk.{table}\"")
        .key("create_topics", true)
        .key("json_schemas", true)
        .key("schema_change_topic", "\"ddlk.schema_changes\"")
        .write(&config)
        .expect("config");
    let run = spawn_run(&config, &log);
    wait_streaming_logged("ddl_kafka", &log);
    psql(&src, "INSERT INTO t VALUES (1, 'before')");
    psql(
        &src,
        "ALTER TABLE t ADD COLUMN c int; INSERT INTO t VALUES (2, 'after', 42)",
    );
    confirmed_to_now(&src, "ddl_kafka", &log, 90);
    let after_fields = |v: &serde_json::Value| -> Vec<String> {
        v["schema"]["fields"]
            .as_array()
            .and_then(|f| f.iter().find(|f| f["field"] == "after"))
            .and_then(|a| a["fields"].as_array())
            .map(|f| {
                f.iter()
                    .filter_map(|x| x["field"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let recs = consume(&broker.addr, "ddlk.t", false);
    let values: Vec<&serde_json::Value> = recs.iter().filter_map(|r| r.value.as_ref()).collect();
    assert_eq!(values.len(), 2, "{}", log_text(&log));
    assert_eq!(after_fields(values[0]), vec!["id", "a"]);
    assert_eq!(after_fields(values[1]), vec!["id", "a", "c"]);
    assert_eq!(values[1]["payload"]["after"]["c"], 42);
    let events = consume(&broker.addr, "ddlk.schema_changes", false);
    assert_eq!(events.len(), 1, "{}", log_text(&log));
    let ev = events[0].value.as_ref().expect("a value");
    assert_eq!(ev["databaseName"], src.as_str());
    assert_eq!(ev["changes"], serde_json::json!(["add column c integer"]));
    assert_eq!(ev["tableChanges"][0]["id"], "\"public\".\"t\"");
    assert_eq!(ev["tableChanges"][0]["table"]["columns"][2]["name"], "c");
    assert!(ev["ddl"]
        .as_str()
        .is_some_and(|s| s.contains("ADD COLUMN c")));
    assert_eq!(
        events[0].key.as_ref().expect("a key")["databaseName"],
        src.as_str()
    );
    assert!(stop_run(run).success(), "{}", log_text(&log));
}

/// A partition attached while streaming brings rows without change
/// events: the log names the partition, the parent and `pgbridge
/// backfill`. A table created as a partition (empty) is no such case.
fn partition_attach_reported() {
    let (port, src) = harness::fresh_db("ddl_part_src");
    let (_, dst) = harness::fresh_db("ddl_part_dst");
    psql(
        &src,
        "CREATE TABLE pt (id int, k int, PRIMARY KEY (id, k)) PARTITION BY RANGE (k);
         CREATE TABLE pt1 PARTITION OF pt FOR VALUES FROM (0) TO (10);
         CREATE PUBLICATION p FOR TABLE pt WITH (publish_via_partition_root = true);",
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("pgbridge.toml");
    let log = dir.path().join("run.log");
    Config::source(&harness::url(port, &src), "ddl_part", &["p"])
        .key("snapshot", "\"never\"")
        .key("capture_ddl", true)
        .postgres_sink("d", &harness::url(port, &dst))
        .key("create_tables", true)
        .write(&config)
        .expect("config");
    let run = spawn_run(&config, &log);
    wait_streaming_logged("ddl_part", &log);
    psql(
        &src,
        "INSERT INTO pt VALUES (1, 1);
         CREATE TABLE pt3 PARTITION OF pt FOR VALUES FROM (20) TO (30);
         CREATE TABLE pt2 (id int, k int, PRIMARY KEY (id, k));
         INSERT INTO pt2 VALUES (2, 15);",
    );
    psql(
        &src,
        "ALTER TABLE pt ATTACH PARTITION pt2 FOR VALUES FROM (10) TO (20)",
    );
    psql(&src, "INSERT INTO pt VALUES (3, 25)");
    confirmed_to_now(&src, "ddl_part", &log, 90);
    let text = log_text(&log);
    assert!(
        text.contains("partition public.pt2 was attached to public.pt")
            && text.contains("pgbridge backfill --config ... --table public.pt"),
        "{text}"
    );
    assert!(
        !text.contains("partition public.pt3 was attached"),
        "{text}"
    );
    assert_eq!(psql(&dst, "SELECT count(*) FROM pt"), "2");
    assert!(stop_run(run).success(), "{}", log_text(&log));
}

/// A Schema Registry that keeps versions per subject and refuses (409, as
/// Confluent's does) a schema whose fields change type from an earlier
/// version's, except int to long (Avro's promotion): a small stand-in for
/// BACKWARD compatibility. Returns its URL and the subjects' versions.
type Subjects = Arc<std::sync::Mutex<std::collections::BTreeMap<String, Vec<String>>>>;

fn field_types(schema: &str) -> Vec<(String, String)> {
    let v: serde_json::Value = serde_json::from_str(schema).unwrap_or_default();
    // The envelope's "before" field defines the row record ("after"
    // names it).
    let fields = v["fields"]
        .as_array()
        .and_then(|f| f.iter().find(|f| f["name"] == "before"))
        .and_then(|a| a["type"].as_array())
        .and_then(|u| u.iter().find(|t| t.is_object()))
        .and_then(|r| r["fields"].as_array())
        .cloned()
        .unwrap_or_default();
    fields
        .iter()
        .map(|f| (f["name"].to_string(), f["type"].to_string()))
        .collect()
}

fn registry_answer(subjects: &Subjects, path: &str, body: &[u8]) -> (&'static str, String) {
    let req: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let schema = req["schema"].as_str().unwrap_or("").to_string();
    let subject = path
        .trim_start_matches("/subjects/")
        .trim_end_matches("/versions")
        .to_string();
    let mut st = subjects.lock().unwrap_or_else(|e| e.into_inner());
    let all: Vec<String> = st.values().flatten().cloned().collect();
    let versions = st.entry(subject.clone()).or_default();
    if let Some(last) = versions.last() {
        let new = field_types(&schema);
        for (name, old_type) in field_types(last) {
            let Some((_, new_type)) = new.iter().find(|(n, _)| *n == name) else {
                continue;
            };
            let promotion = old_type.contains("\"int\"") && new_type.contains("\"long\"");
            if *new_type != old_type && !promotion {
                return (
                    "409 Conflict",
                    serde_json::json!({"error_code": 409, "message": format!(
                        "Schema being registered is incompatible with an earlier schema for subject \"{subject}\": field {name} changed type"
                    )})
                    .to_string(),
                );
            }
        }
    }
    if !versions.contains(&schema) {
        versions.push(schema.clone());
    }
    let id = all.iter().position(|s| *s == schema).unwrap_or(all.len()) + 1;
    ("200 OK", serde_json::json!({ "id": id }).to_string())
}

fn start_registry() -> (String, Subjects) {
    use std::io::{BufRead, BufReader, Read, Write};
    let subjects: Subjects = Default::default();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let s = subjects.clone();
    std::thread::spawn(move || {
        for sock in listener.incoming() {
            let Ok(sock) = sock else { return };
            let s = s.clone();
            std::thread::spawn(move || {
                let mut rd = BufReader::new(sock.try_clone().expect("clone"));
                let mut wr = sock;
                loop {
                    let mut line = String::new();
                    if rd.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
                    let mut len = 0;
                    loop {
                        let mut h = String::new();
                        if rd.read_line(&mut h).unwrap_or(0) == 0 {
                            return;
                        }
                        let h = h.trim_end();
                        if h.is_empty() {
                            break;
                        }
                        if let Some((k, v)) = h.split_once(':') {
                            if k.eq_ignore_ascii_case("content-length") {
                                len = v.trim().parse().unwrap_or(0);
                            }
                        }
                    }
                    let mut body = vec![0; len];
                    if rd.read_exact(&mut body).is_err() {
                        return;
                    }
                    let (status, text) = registry_answer(&s, &path, &body);
                    let resp = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/vnd.schemaregistry.v1+json\r\ncontent-length: {}\r\n\r\n{text}",
                        text.len()
                    );
                    if wr.write_all(resp.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, subjects)
}

/// Avro: ADD COLUMN registers a new version of the table's value subject;
/// a type change the registry finds incompatible stops the sink, naming
/// the subject and the schema change, with nothing confirmed past it.
fn avro_new_version_and_refusal() {
    let broker = Tansu::start();
    let (registry, subjects) = start_registry();
    let (port, src) = harness::fresh_db("ddl_avro_src");
    psql(
        &src,
        "CREATE TABLE t (id int PRIMARY KEY, a text); CREATE PUBLICATION p FOR TABLE t;",
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("pgbridge.toml");
    let log = dir.path().join("run.log");
    Config::source(&harness::url(port, &src), "ddl_avro", &["p"])
        .key("snapshot", "\"never\"")
        .key("capture_ddl", true)
        .kafka_sink("cdc", &broker.addr)
        .key("topic", "\"ddla.{table}\"")
        .key("create_topics", true)
        .key("format", "\"avro\"")
        .raw(&format!("[sink.schema_registry]\nurl = \"{registry}\"\n"))
        .write(&config)
        .expect("config");
    let run = spawn_run(&config, &log);
    wait_streaming_logged("ddl_avro", &log);
    psql(&src, "INSERT INTO t VALUES (1, 'before')");
    psql(
        &src,
        "ALTER TABLE t ADD COLUMN c int; INSERT INTO t VALUES (2, 'after', 42)",
    );
    confirmed_to_now(&src, "ddl_avro", &log, 90);
    let versions = |s: &Subjects| {
        s.lock()
            .unwrap_or_else(|e| e.into_inner())
            .get("ddla.t-value")
            .map(|v| v.iter().map(|x| field_types(x).len()).collect::<Vec<_>>())
            .unwrap_or_default()
    };
    assert_eq!(versions(&subjects), vec![2, 3], "{}", log_text(&log));
    let before = psql(
        "postgres",
        "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = 'ddl_avro'",
    );
    psql(
        &src,
        "ALTER TABLE t ALTER COLUMN c TYPE text; INSERT INTO t VALUES (3, 'typed', 'x')",
    );
    let status = wait_exit(run, &log, "the sink to stop on the refused schema");
    assert!(!status.success());
    let text = log_text(&log);
    // A capture that failed says so in the server log (a WARNING that
    // does not fail the DDL): shown when the change is not named.
    let warnings = || {
        harness::with_cluster(|c| c.server_log())
            .lines()
            .filter(|l| l.contains("pgbridge"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(
        text.contains("ddla.t-value")
            && text.contains("incompatible")
            && text.contains("column c type integer -> text"),
        "{text}\nserver log lines naming pgbridge:\n{}",
        warnings()
    );
    let after = psql(
        "postgres",
        "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = 'ddl_avro'",
    );
    let still_owed = psql(
        &src,
        "SELECT count(*) FROM pg_logical_slot_peek_binary_changes('ddl_avro', NULL, NULL, \
         'proto_version', '1', 'publication_names', 'p')",
    );
    assert!(
        still_owed.parse::<u64>().unwrap_or(0) > 0,
        "the refused transaction is still owed (confirmed {before} -> {after})"
    );
}

/// A capture that breaks (its record table dropped) lets the source's DDL
/// through: the statement succeeds, and `run` (as a superuser) repairs
/// the capture at its next start.
fn broken_capture_never_fails_ddl() {
    let (port, src) = harness::fresh_db("ddl_broken_src");
    psql(&src, "CREATE TABLE t (id int PRIMARY KEY)");
    psql(&src, pgbridge::source::ddl::CAPTURE_SQL);
    psql(&src, "ALTER TABLE t ADD COLUMN a int");
    psql(&src, "DROP TABLE pgbridge.ddl_tables");
    psql(
        &src,
        "ALTER TABLE t ADD COLUMN b int; ALTER TABLE t RENAME COLUMN a TO a2",
    );
    assert_eq!(columns(&src, "t"), "id integer, a2 integer, b integer");
    let info = pgbridge::source::ConnInfo::parse(&harness::url(port, &src)).expect("url");
    let rt = harness::runtime();
    let st = rt
        .block_on(pgbridge::source::ddl::state(&info))
        .expect("state");
    assert!(!st.installed && st.superuser, "{st:?}");
    rt.block_on(pgbridge::source::ddl::ensure_installed(&info))
        .expect("reinstalled");
    assert!(
        rt.block_on(pgbridge::source::ddl::state(&info))
            .expect("state")
            .installed
    );
    assert_eq!(
        psql(&src, "SELECT definition->'columns'->1->>'name' FROM pgbridge.ddl_tables WHERE relid = 't'::regclass"),
        "a2"
    );
}
