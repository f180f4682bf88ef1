//! `schema = "copy"`: the initial copy creates the selected tables on an
//! empty target (PostgreSQL 17 and 15) from the source's definitions, and
//! the target's catalog then describes them as the source's does.

use std::path::Path;

use libtest_mimic::Trial;
use pgbridge::cluster::{ClusterOptions, LocalCluster};

use crate::harness::bridge::{
    run_sync_sequences, run_to_exit, spawn_run, stop_run, wait_for, wait_streaming,
};
use crate::harness::config::Config;
use crate::harness::{self, pg17_bin, psql};
use crate::trial;

pub fn trials() -> Vec<Trial> {
    vec![
        trial(
            "schema_copy::full_schema_into_empty_pg17_and_pg15",
            full_schema_into_empty_pg17_and_pg15,
        ),
        trial(
            "schema_copy::partitions_published_as_leaves",
            partitions_published_as_leaves,
        ),
        trial(
            "schema_copy::foreign_key_to_a_table_copied_earlier",
            foreign_key_to_a_table_copied_earlier,
        ),
        trial(
            "schema_copy::check_names_a_missing_extension",
            check_names_a_missing_extension,
        ),
        trial(
            "schema_copy::function_it_cannot_create_and_unselected_foreign_key",
            function_it_cannot_create_and_unselected_foreign_key,
        ),
    ]
}

/// What a production schema has: identity and serial keys, a shared
/// sequence, a default calling a function, an enum, a domain, a composite
/// over the domain, a collation, NOT NULL, CHECK, UNIQUE and EXCLUDE
/// constraints, multi-column, partial and expression indexes, a foreign
/// key between two selected tables, a trigger, a partitioned table with
/// two partitions, a generated column, comments, replica identity.
const SCHEMA: &str = r#"
CREATE SCHEMA app;
CREATE TYPE app.mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN app.positive AS integer DEFAULT 1 CHECK (VALUE > 0);
CREATE TYPE app.address AS (street text, zip app.positive);
CREATE FUNCTION app.default_code() RETURNS text LANGUAGE sql
  AS $$ SELECT 'C-' || md5(random()::text) $$;
CREATE FUNCTION app.stamp() RETURNS trigger LANGUAGE plpgsql
  AS $$ BEGIN NEW.updated := now(); RETURN NEW; END $$;
CREATE SEQUENCE app.shared_seq START 100 INCREMENT 5;
CREATE TABLE app.customers (
  id bigint GENERATED ALWAYS AS IDENTITY (START WITH 10) PRIMARY KEY,
  code text NOT NULL DEFAULT app.default_code(),
  name text COLLATE "C" NOT NULL,
  email text UNIQUE,
  mood app.mood NOT NULL DEFAULT 'ok',
  score app.positive,
  home app.address,
  tags text[],
  ref bigint DEFAULT nextval('app.shared_seq'),
  name_len int GENERATED ALWAYS AS (length(name)) STORED,
  CONSTRAINT name_not_blank CHECK (name <> ''));
COMMENT ON TABLE app.customers IS 'people who buy';
COMMENT ON COLUMN app.customers.email IS 'unique when set';
CREATE INDEX customers_lower_email ON app.customers (lower(email));
CREATE INDEX customers_mood_partial ON app.customers (mood, id) WHERE mood <> 'ok';
CREATE TABLE app.orders (
  id serial PRIMARY KEY,
  customer_id bigint NOT NULL REFERENCES app.customers (id) ON DELETE CASCADE,
  total numeric(12, 2) CHECK (total >= 0),
  placed date NOT NULL DEFAULT current_date,
  slot tstzrange,
  updated timestamptz,
  UNIQUE (customer_id, placed, id),
  EXCLUDE USING gist (slot WITH &&));
ALTER TABLE app.orders REPLICA IDENTITY FULL;
CREATE TRIGGER orders_stamp BEFORE UPDATE ON app.orders
  FOR EACH ROW EXECUTE FUNCTION app.stamp();
CREATE TABLE app.events (
  id bigint NOT NULL, region text NOT NULL, at timestamptz NOT NULL DEFAULT now(), body jsonb,
  PRIMARY KEY (id, region)) PARTITION BY LIST (region);
CREATE TABLE app.events_eu PARTITION OF app.events FOR VALUES IN ('eu');
CREATE TABLE app.events_us PARTITION OF app.events FOR VALUES IN ('us');
CREATE INDEX events_at ON app.events (at);
COMMENT ON TABLE app.events_us IS 'the US part';
INSERT INTO app.customers (name, email, mood, score, home, tags)
  SELECT 'customer ' || g, CASE WHEN g % 7 <> 0 THEN 'c' || g || '@example.com' END,
         (ARRAY['sad', 'ok', 'happy'])[1 + g % 3]::app.mood, 1 + g % 9,
         ROW('street ' || g, 1000 + g)::app.address, ARRAY['t' || g % 4]
  FROM generate_series(1, 300) g;
INSERT INTO app.orders (customer_id, total, slot)
  SELECT 10 + g % 300, g * 1.5,
         tstzrange(timestamptz '2026-01-01' + g * interval '1 hour',
                   timestamptz '2026-01-01' + (g + 1) * interval '1 hour')
  FROM generate_series(1, 1200) g;
INSERT INTO app.events (id, region, body)
  SELECT g, (ARRAY['eu', 'us'])[1 + g % 2], jsonb_build_object('n', g)
  FROM generate_series(1, 400) g;
CREATE PUBLICATION schema_pub FOR TABLE app.customers, app.orders, app.events
  WITH (publish_via_partition_root = true);
"#;

/// The schema `app` as the catalog describes it: tables and partitions
/// with their bounds, comments and replica identity; columns with type,
/// collation, default, identity, generated expression, nullability and
/// comment; constraints; index, trigger and type definitions; sequences.
/// Sorted text: equal on two databases when the schemas are.
const DESCRIBE: &str = r#"
SELECT string_agg(x, E'\n' ORDER BY x) FROM (
  SELECT 'rel ' || c.relname || ' ' || c.relkind::text || ' ' || c.relreplident::text || ' '
         || coalesce(pg_get_expr(c.relpartbound, c.oid), '') || ' '
         || coalesce(pg_get_partkeydef(c.oid), '') || ' '
         || coalesce(obj_description(c.oid, 'pg_class'), '')
  FROM pg_class c WHERE c.relnamespace = 'app'::regnamespace
  UNION ALL
  SELECT 'col ' || c.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
         || ' ' || a.attnotnull || ' ' || coalesce(pg_get_expr(d.adbin, d.adrelid), '-')
         || ' [' || a.attidentity::text || a.attgenerated::text || '] ' || coalesce(co.collname, '')
         || ' ' || coalesce(col_description(c.oid, a.attnum), '')
  FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
  LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
  LEFT JOIN pg_collation co ON co.oid = a.attcollation
  WHERE c.relnamespace = 'app'::regnamespace AND c.relkind IN ('r', 'p', 'c')
  UNION ALL
  SELECT 'con ' || coalesce(conrelid::regclass::text, '') || ' ' || coalesce(contypid::regtype::text, '')
         || ' ' || conname || ' ' || pg_get_constraintdef(oid)
  FROM pg_constraint WHERE connamespace = 'app'::regnamespace
  UNION ALL
  SELECT 'idx ' || pg_get_indexdef(i.indexrelid) || ' ' || i.indisreplident::text
  FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid WHERE c.relnamespace = 'app'::regnamespace
  UNION ALL
  SELECT 'trg ' || pg_get_triggerdef(t.oid) || ' ' || t.tgenabled::text
  FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
  WHERE c.relnamespace = 'app'::regnamespace AND NOT t.tgisinternal
  UNION ALL
  SELECT 'type ' || t.typname || ' ' || t.typtype::text || ' ' || format_type(t.typbasetype, t.typtypmod)
         || ' ' || coalesce(t.typdefault, '') || ' '
         || coalesce((SELECT string_agg(enumlabel, ',' ORDER BY enumsortorder) FROM pg_enum WHERE enumtypid = t.oid), '')
  FROM pg_type t WHERE t.typnamespace = 'app'::regnamespace
  UNION ALL
  SELECT 'seq ' || sequencename || ' ' || data_type || ' ' || start_value || ' ' || min_value
         || ' ' || max_value || ' ' || increment_by || ' ' || cycle::text || ' ' || cache_size
  FROM pg_sequences WHERE schemaname = 'app'
  UNION ALL
  SELECT 'owned ' || s.relname || ' ' || d.refobjid::regclass::text || ' ' || d.deptype::text
  FROM pg_depend d JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
  WHERE s.relnamespace = 'app'::regnamespace AND d.refclassid = 'pg_class'::regclass
  UNION ALL
  SELECT 'fn ' || p.oid::regprocedure::text || ' ' || md5(pg_get_functiondef(p.oid))
  FROM pg_proc p WHERE p.pronamespace = 'app'::regnamespace
) s(x)"#;

/// [`DESCRIBE`] for schema `public` instead of `app`.
fn describe_public() -> String {
    DESCRIBE
        .replace("'app'::regnamespace", "'public'::regnamespace")
        .replace("schemaname = 'app'", "schemaname = 'public'")
}

/// Count and md5 of every row of each table (ordered by key).
fn digest(run: &dyn Fn(&str) -> String) -> String {
    [
        "app.customers ORDER BY id",
        "app.orders ORDER BY id",
        "app.events ORDER BY id, region",
    ]
    .iter()
    .map(|t| {
        let (table, order) = t.split_once(" ORDER BY ").unwrap_or((t, "1"));
        run(&format!(
            "SELECT count(*) || ' ' || md5(coalesce(string_agg(x::text, '|' ORDER BY {order}), '')) FROM {table} x"
        ))
    })
    .collect::<Vec<_>>()
    .join("\n")
}

fn config(path: &Path, source: &str, slot: &str, snapshot: &str, sinks: &[(&str, &str)]) {
    let mut c =
        Config::source(source, slot, &["schema_pub"]).key("snapshot", format!("\"{snapshot}\""));
    for (name, url) in sinks {
        c = c.postgres_sink(name, url).key("schema", "\"copy\"");
    }
    c.write(path)
        .unwrap_or_else(|e| panic!("write config: {e}"));
}

fn full_schema_into_empty_pg17_and_pg15() {
    let (port, src) = harness::fresh_db("schema_src");
    let (_, dst15) = harness::fresh_db("schema_dst15");
    let new = LocalCluster::start(&ClusterOptions {
        bin: Some(pg17_bin()),
        ..Default::default()
    })
    .expect("start the PostgreSQL 17 cluster");
    let on17 = |sql: &str| new.psql("app17", sql).unwrap_or_else(|e| panic!("{e}"));
    new.psql("postgres", "CREATE DATABASE app17")
        .unwrap_or_else(|e| panic!("{e}"));
    psql(&src, SCHEMA);

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("clone.toml");
    let log = dir.path().join("pgbridge.log");
    config(
        &path,
        &harness::url(port, &src),
        "schema_clone",
        "initial_only",
        &[
            ("pg17", &new.url("app17", "postgres")),
            ("pg15", &harness::url(port, &dst15)),
        ],
    );
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(run_to_exit(&path, &log), "{}", text());

    let want = psql(&src, DESCRIBE);
    assert!(
        want.contains("idx CREATE INDEX customers_mood_partial"),
        "{want}"
    );
    assert_eq!(
        on17(DESCRIBE),
        want,
        "PostgreSQL 17's schema differs:\n{}",
        text()
    );
    assert_eq!(
        psql(&dst15, DESCRIBE),
        want,
        "PostgreSQL 15's schema differs:\n{}",
        text()
    );
    let rows = digest(&|sql| psql(&src, sql));
    assert_eq!(digest(&|sql| on17(sql)), rows, "{}", text());
    assert_eq!(digest(&|sql| psql(&dst15, sql)), rows, "{}", text());
    // The foreign key was added after both tables' copies, and holds.
    assert_eq!(
        on17("SELECT convalidated FROM pg_constraint WHERE conname = 'orders_customer_id_fkey'"),
        "t"
    );
    // Sequences are where the source's are (initial_only syncs them):
    // the next default keys on the clone do not collide.
    on17("INSERT INTO app.customers (name) VALUES ('on the clone')");
    assert_eq!(
        on17("SELECT id, ref FROM app.customers WHERE name = 'on the clone'"),
        psql(&src, "SELECT max(id) + 1, max(ref) + 5 FROM app.customers")
    );
    // The trigger (its function created by the copy) fires on the clone.
    on17("UPDATE app.orders SET total = 1 WHERE id = 1");
    assert_eq!(
        on17("SELECT updated IS NOT NULL FROM app.orders WHERE id = 1"),
        "t"
    );

    streaming_after_the_copy(port, &src, dir.path());
}

/// A streaming run with `schema = "copy"` into another empty database:
/// rows written after the copy arrive, and sync-sequences sets the
/// sequences the copy created.
fn streaming_after_the_copy(port: u16, src: &str, dir: &Path) {
    let (_, dst) = harness::fresh_db("schema_stream");
    let path = dir.join("stream.toml");
    let log = dir.join("stream.log");
    config(
        &path,
        &harness::url(port, src),
        "schema_stream",
        "initial",
        &[("live", &harness::url(port, &dst))],
    );
    let child = spawn_run(&path, &log);
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_streaming("schema_stream");
    psql(
        src,
        "INSERT INTO app.customers (name, mood) VALUES ('streamed', 'happy');
         INSERT INTO app.orders (customer_id, total) SELECT max(id), 9.5 FROM app.customers;
         INSERT INTO app.events (id, region) VALUES (1000, 'us');
         UPDATE app.orders SET total = total + 1 WHERE id <= 10;
         DELETE FROM app.events WHERE id = 3;",
    );
    let want = digest(&|sql| psql(src, sql));
    wait_for("the streamed rows", 60, || {
        digest(&|sql| psql(&dst, sql)) == want
    });
    assert_eq!(psql(&dst, DESCRIBE), psql(src, DESCRIBE), "{}", text());
    let out = run_sync_sequences(&path, &[]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stop_run(child).success(), "{}", text());
    psql(
        &dst,
        "INSERT INTO app.orders (customer_id) SELECT min(id) FROM app.customers",
    );
    assert_eq!(
        psql(&dst, "SELECT max(id) FROM app.orders"),
        psql(src, "SELECT max(id) + 1 FROM app.orders")
    );
    psql(
        "postgres",
        "SELECT pg_drop_replication_slot('schema_stream')",
    );
}

/// A default calls a function whose argument type the tables do not use,
/// so the target lacks it and creating the function fails: the run stops
/// naming the function and the fix; following it, the next run copies.
/// The table created before the failure (`audit`, first by name) is left
/// as the first run made it, and the next run's copy still gives it the
/// keys, index and trigger saved with it, and its foreign key to `child`.
/// A foreign key to a table the sink does not take is left out with a
/// warning naming it, and the rest is copied.
fn function_it_cannot_create_and_unselected_foreign_key() {
    let (port, src) = harness::fresh_db("schema_fn_src");
    let (_, dst) = harness::fresh_db("schema_fn_dst");
    psql(
        &src,
        "CREATE TYPE unit AS ENUM ('kg', 'lb');
         CREATE FUNCTION weight_of(u unit DEFAULT 'kg') RETURNS int LANGUAGE sql
           AS $$ SELECT CASE WHEN u = 'kg' THEN 1 ELSE 2 END $$;
         CREATE TABLE parent (id int PRIMARY KEY);
         CREATE TABLE child (id int PRIMARY KEY, parent_id int REFERENCES parent (id),
           w int DEFAULT weight_of());
         INSERT INTO parent SELECT generate_series(1, 20);
         INSERT INTO child (id, parent_id) SELECT g, 1 + g % 20 FROM generate_series(1, 50) g;
         CREATE FUNCTION audit_note() RETURNS trigger LANGUAGE plpgsql
           AS $$ BEGIN NEW.note := coalesce(NEW.note, 'noted'); RETURN NEW; END $$;
         CREATE TABLE audit (id int PRIMARY KEY, child_id int NOT NULL REFERENCES child,
           note text);
         CREATE INDEX audit_child ON audit (child_id, note);
         CREATE TRIGGER audit_note BEFORE INSERT ON audit FOR EACH ROW EXECUTE FUNCTION audit_note();
         ALTER TABLE audit DISABLE TRIGGER audit_note;
         INSERT INTO audit SELECT g, 1 + g % 50 FROM generate_series(1, 80) g;
         ALTER TABLE audit ENABLE TRIGGER audit_note;
         CREATE PUBLICATION schema_pub FOR TABLE parent, child, audit;",
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("child.toml");
    let log = dir.path().join("pgbridge.log");
    Config::source(&harness::url(port, &src), "schema_fn", &["schema_pub"])
        .key("snapshot", "\"initial_only\"")
        .postgres_sink("only_child", &harness::url(port, &dst))
        .key("schema", "\"copy\"")
        .key("tables", "[\"public.child\", \"public.audit\"]")
        .write(&path)
        .unwrap_or_else(|e| panic!("{e}"));
    // `check` does not count the tables the copy will create as missing.
    let (ok, out) = check(&path);
    assert!(ok, "{out}");
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!run_to_exit(&path, &log), "{}", text());
    let first = text();
    assert!(
        first.contains("function public.weight_of(u unit)")
            && first.contains("create it on the target yourself"),
        "{first}"
    );
    assert_eq!(
        psql(&dst, "SELECT to_regclass('public.child') IS NULL"),
        "t"
    );
    // `audit` was created before `child` failed, without its keys yet.
    assert_eq!(
        psql(
            &dst,
            "SELECT count(*) FROM pg_index WHERE indrelid = 'audit'::regclass"
        ),
        "0"
    );
    // The advice: create the function (and its type) on the target.
    psql(
        &dst,
        "CREATE TYPE unit AS ENUM ('kg', 'lb');
         CREATE FUNCTION weight_of(u unit DEFAULT 'kg') RETURNS int LANGUAGE sql
           AS $$ SELECT CASE WHEN u = 'kg' THEN 1 ELSE 2 END $$;",
    );
    assert!(run_to_exit(&path, &log), "{}", text());
    let all = text();
    assert!(
        all.contains("foreign key left out")
            && all.contains("child_parent_id_fkey")
            && all.contains("public.parent"),
        "{all}"
    );
    assert_eq!(psql(&dst, "SELECT count(*), sum(w) FROM child"), "50|50");
    let defs = "SELECT string_agg(d, ' | ' ORDER BY d) FROM ( \
        SELECT pg_get_indexdef(indexrelid) FROM pg_index WHERE indrelid = 'audit'::regclass \
        UNION ALL SELECT conname || ' ' || pg_get_constraintdef(oid) || ' ' || convalidated::text \
          FROM pg_constraint WHERE conrelid = 'audit'::regclass \
        UNION ALL SELECT pg_get_triggerdef(oid) FROM pg_trigger \
          WHERE tgrelid = 'audit'::regclass AND NOT tgisinternal) x(d)";
    assert_eq!(psql(&dst, defs), psql(&src, defs), "{all}");
    // The rows are the source's (the trigger came after them).
    assert_eq!(
        psql(&dst, "SELECT count(*), count(note) FROM audit"),
        "80|0",
        "{all}"
    );
    assert_eq!(
        psql(&dst, "SELECT to_regclass('public.parent') IS NULL"),
        "t"
    );
    assert_eq!(
        psql(&dst, "SELECT string_agg(conname, ',' ORDER BY conname) FROM pg_constraint WHERE conrelid = 'child'::regclass"),
        "child_pkey"
    );
}

/// A partitioned table published as its leaves (`publish_via_partition_root`
/// off): the first leaf's copy creates the whole tree with its indexes
/// (the other leaves are then left as they are); the root's row trigger
/// and foreign key come once every leaf (and the referenced table) is
/// copied.
fn partitions_published_as_leaves() {
    let (port, src) = harness::fresh_db("schema_leaves_src");
    let (_, dst) = harness::fresh_db("schema_leaves_dst");
    psql(
        &src,
        "CREATE TABLE kinds (k text PRIMARY KEY);
         CREATE TABLE m (id int, k text NOT NULL REFERENCES kinds, v int CHECK (v >= 0),
           PRIMARY KEY (id, k)) PARTITION BY LIST (k);
         CREATE TABLE m_a PARTITION OF m FOR VALUES IN ('a');
         CREATE TABLE m_b PARTITION OF m FOR VALUES IN ('b') PARTITION BY RANGE (id);
         CREATE TABLE m_b_low PARTITION OF m_b FOR VALUES FROM (MINVALUE) TO (100);
         CREATE TABLE m_b_high PARTITION OF m_b DEFAULT;
         CREATE INDEX m_v ON m (v);
         CREATE INDEX m_a_own ON m_a (v, id) WHERE v > 10;
         CREATE FUNCTION bump() RETURNS trigger LANGUAGE plpgsql
           AS $$ BEGIN NEW.v := NEW.v + 1000; RETURN NEW; END $$;
         CREATE TRIGGER m_bump BEFORE INSERT ON m FOR EACH ROW EXECUTE FUNCTION bump();
         INSERT INTO kinds VALUES ('a'), ('b');
         ALTER TABLE m DISABLE TRIGGER m_bump;
         INSERT INTO m SELECT g, (ARRAY['a', 'b'])[1 + g % 2], g FROM generate_series(1, 300) g;
         ALTER TABLE m ENABLE TRIGGER m_bump;
         CREATE PUBLICATION schema_pub FOR TABLE kinds, m;",
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("leaves.toml");
    let log = dir.path().join("pgbridge.log");
    config(
        &path,
        &harness::url(port, &src),
        "schema_leaves",
        "initial_only",
        &[("leaves", &harness::url(port, &dst))],
    );
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(run_to_exit(&path, &log), "{}", text());
    let describe = describe_public();
    let want = psql(&src, &describe);
    assert!(
        want.contains("m_a_own") && want.contains("m_b_high"),
        "{want}"
    );
    assert_eq!(psql(&dst, &describe), want, "{}", text());
    assert_eq!(
        psql(&dst, "SELECT count(*), sum(v) FROM m"),
        psql(&src, "SELECT count(*), sum(v) FROM m"),
        "{}",
        text()
    );
    assert!(
        text().contains("what=foreign key m_k_fkey") && text().contains("what=trigger m_bump"),
        "{}",
        text()
    );
    // The trigger came after the rows: they were copied as they are, and
    // it fires for rows written on the target.
    psql(&dst, "INSERT INTO m VALUES (1000, 'a', 1)");
    assert_eq!(psql(&dst, "SELECT v FROM m WHERE id = 1000"), "1001");
}

/// A table added to the sink's tables later is copied at a newer point
/// than the table its foreign key references (copied by an earlier run,
/// and behind until the stream catches up): the key is added NOT VALID
/// with a warning, and validates, as the warning says, once the stream
/// has brought the referenced rows.
fn foreign_key_to_a_table_copied_earlier() {
    let (port, src) = harness::fresh_db("schema_late_src");
    let (_, dst) = harness::fresh_db("schema_late_dst");
    psql(
        &src,
        "CREATE TABLE parent (id int PRIMARY KEY);
         CREATE TABLE child (id int PRIMARY KEY, parent_id int NOT NULL REFERENCES parent);
         INSERT INTO parent SELECT generate_series(1, 10);
         INSERT INTO child SELECT g, 1 + g % 10 FROM generate_series(1, 30) g;
         CREATE PUBLICATION schema_pub FOR TABLE parent, child;",
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("late.toml");
    let log = dir.path().join("pgbridge.log");
    let write = |tables: &str| {
        Config::source(&harness::url(port, &src), "schema_late", &["schema_pub"])
            .key("snapshot", "\"initial\"")
            .postgres_sink("late", &harness::url(port, &dst))
            .key("schema", "\"copy\"")
            .key("tables", tables)
            .write(&path)
            .unwrap_or_else(|e| panic!("{e}"));
    };
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    write("[\"public.parent\"]");
    let child = spawn_run(&path, &log);
    wait_streaming("schema_late");
    assert!(stop_run(child).success(), "{}", text());
    // While pgbridge is stopped: a parent and a child referencing it.
    psql(
        &src,
        "INSERT INTO parent VALUES (100); INSERT INTO child VALUES (100, 100);",
    );
    write("[\"public.parent\", \"public.child\"]");
    let child = spawn_run(&path, &log);
    wait_for("the stream to bring parent 100", 60, || {
        psql(&dst, "SELECT count(*) FROM parent WHERE id = 100") == "1"
    });
    assert!(
        text().contains("added NOT VALID") && text().contains("VALIDATE CONSTRAINT"),
        "{}",
        text()
    );
    assert_eq!(
        psql(
            &dst,
            "SELECT convalidated FROM pg_constraint WHERE conname = 'child_parent_id_fkey'"
        ),
        "f"
    );
    psql(
        &dst,
        "ALTER TABLE child VALIDATE CONSTRAINT child_parent_id_fkey",
    );
    assert_eq!(
        psql(
            &dst,
            "SELECT convalidated FROM pg_constraint WHERE conname = 'child_parent_id_fkey'"
        ),
        "t"
    );
    assert_eq!(psql(&dst, "SELECT count(*) FROM child"), "31");
    assert!(stop_run(child).success(), "{}", text());
    psql("postgres", "SELECT pg_drop_replication_slot('schema_late')");
}

/// `pgbridge check` output and whether it passed.
fn check(config: &Path) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pgbridge"))
        .args(["check", "--config"])
        .arg(config)
        .output()
        .expect("run check");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A column of an extension's type: `check` names the extension the
/// target lacks (the schema copy does not create extensions), and so does
/// the run; after the advice both go through.
fn check_names_a_missing_extension() {
    let (port, src) = harness::fresh_db("schema_ext_src");
    let (_, dst) = harness::fresh_db("schema_ext_dst");
    psql(
        &src,
        "CREATE EXTENSION citext;
         CREATE TABLE people (id int PRIMARY KEY, email citext UNIQUE);
         INSERT INTO people SELECT g, 'P' || g || '@Example.com' FROM generate_series(1, 40) g;
         CREATE PUBLICATION schema_pub FOR TABLE people;",
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ext.toml");
    let log = dir.path().join("pgbridge.log");
    config(
        &path,
        &harness::url(port, &src),
        "schema_ext",
        "initial_only",
        &[("ext", &harness::url(port, &dst))],
    );
    let (ok, out) = check(&path);
    assert!(
        !ok && out.contains("type public.citext (used by public.people)")
            && out.contains("CREATE EXTENSION \"citext\""),
        "{out}"
    );
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!run_to_exit(&path, &log), "{}", text());
    assert!(text().contains("CREATE EXTENSION \"citext\""), "{}", text());
    psql(&dst, "CREATE EXTENSION citext");
    let (ok, out) = check(&path);
    assert!(ok, "{out}");
    assert!(run_to_exit(&path, &log), "{}", text());
    assert_eq!(
        psql(
            &dst,
            "SELECT count(*) FROM people WHERE email = 'p7@example.COM'"
        ),
        "1"
    );
}
