//! Two-way replication: a forward pipeline A→B and a reverse one B→A run
//! at the same time while both sides take writes (different rows). The
//! sinks apply under replication origins and each pipeline skips what the
//! other's sink wrote, so nothing goes round in a loop.

use std::collections::BTreeMap;
use std::time::Duration;

use libtest_mimic::Trial;

use crate::harness::bridge::{wait_for_run, wait_streaming, write_single, Run};
use crate::harness::{self, psql};
use crate::trial;

pub fn trials() -> Vec<Trial> {
    vec![
        trial(
            "origins::forward_and_reverse_converge",
            forward_and_reverse_converge,
        ),
        trial(
            "origins::off_writes_without_origin",
            off_writes_without_origin,
        ),
    ]
}

/// The table on both sides, and an audit of every row written to it: an
/// `ENABLE ALWAYS` trigger fires for the sinks' writes too, so a change
/// applied twice (or sent back) counts twice.
const DDL: &str = "CREATE TABLE t (id int PRIMARY KEY, side text NOT NULL, n int NOT NULL); \
    CREATE TABLE audit (id int PRIMARY KEY, writes int NOT NULL); \
    CREATE FUNCTION count_write() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
      INSERT INTO audit VALUES (NEW.id, 1) ON CONFLICT (id) DO UPDATE SET writes = audit.writes + 1; \
      RETURN NULL; END $$; \
    CREATE TRIGGER count_write AFTER INSERT OR UPDATE ON t FOR EACH ROW EXECUTE FUNCTION count_write(); \
    ALTER TABLE t ENABLE ALWAYS TRIGGER count_write; \
    CREATE PUBLICATION p FOR TABLE t;";

/// `id:side:n` of every row of `t`, in key order.
fn rows(db: &str) -> String {
    psql(
        db,
        "SELECT coalesce(string_agg(id || ':' || side || ':' || n, ',' ORDER BY id), '') FROM t",
    )
}

/// Writes per row id, from the audit table.
fn audit(db: &str) -> BTreeMap<i32, i32> {
    psql(
        db,
        "SELECT coalesce(string_agg(id || ':' || writes, ',' ORDER BY id), '') FROM audit",
    )
    .split(',')
    .filter(|s| !s.is_empty())
    .map(|s| {
        let (id, n) = s.split_once(':').expect("id:writes");
        (id.parse().expect("id"), n.parse().expect("writes"))
    })
    .collect()
}

fn forward_and_reverse_converge() {
    let (port, a) = harness::fresh_db("or_a");
    let (_, b) = harness::fresh_db("or_b");
    psql(&a, DDL);
    psql(&b, DDL);
    // A's existing rows: the forward pipeline's initial copy brings them.
    psql(
        &a,
        "INSERT INTO t SELECT g, 'a', 0 FROM generate_series(1, 100) g",
    );
    let mut expected: BTreeMap<i32, i32> = (1..=100).map(|id| (id, 1)).collect();

    let dir = tempfile::tempdir().expect("tempdir");
    let (fwd_config, rev_config) = (dir.path().join("fwd.toml"), dir.path().join("rev.toml"));
    let (fwd_log, rev_log) = (dir.path().join("fwd.log"), dir.path().join("rev.log"));
    write_single(
        &fwd_config,
        &harness::url(port, &a),
        "or_fwd",
        "initial",
        &harness::url(port, &b),
        "apply_workers = 2\n",
    );
    write_single(
        &rev_config,
        &harness::url(port, &b),
        "or_rev",
        "never",
        &harness::url(port, &a),
        "",
    );
    // The reverse slot exists before the forward copy writes into B: the
    // copy's rows carry an origin and do not come back.
    let rev = Run::spawn(&rev_config, &rev_log);
    wait_streaming("or_rev");
    let fwd = Run::spawn(&fwd_config, &fwd_log);
    wait_streaming("or_fwd");

    for r in 0..40 {
        psql(
            &a,
            &format!(
                "BEGIN; INSERT INTO t VALUES ({}, 'a', 0); UPDATE t SET n = n + 1 WHERE id = {}; COMMIT;",
                200 + r,
                1 + r % 10
            ),
        );
        *expected.entry(200 + r).or_default() += 1;
        *expected.entry(1 + r % 10).or_default() += 1;
        psql(
            &b,
            &format!(
                "BEGIN; INSERT INTO t VALUES ({}, 'b', 0); UPDATE t SET n = n + 1 WHERE id = {}; COMMIT;",
                1000 + r,
                1000 + r / 2
            ),
        );
        *expected.entry(1000 + r).or_default() += 1;
        *expected.entry(1000 + r / 2).or_default() += 1;
    }

    wait_for_run("both sides to converge", 120, &fwd_log, || {
        audit(&a) == expected && audit(&b) == expected
    });
    wait_for_run("the reverse pipeline to converge", 30, &rev_log, || {
        rows(&a) == rows(&b)
    });
    let converged = rows(&a);
    assert_eq!(converged.split(',').count(), 100 + 40 + 40);
    // Quiet for a while: nothing goes round.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(audit(&a), expected, "A's rows were written again");
    assert_eq!(audit(&b), expected, "B's rows were written again");
    assert_eq!(rows(&b), converged);

    let origins = psql(
        "postgres",
        "SELECT string_agg(roname, ',' ORDER BY roname) FROM pg_replication_origin WHERE roname LIKE 'pgbridge_or\\_%'",
    );
    for name in [
        "pgbridge_or_fwd.d.w0",
        "pgbridge_or_fwd.d.w1",
        "pgbridge_or_rev.d",
    ] {
        assert!(
            origins.split(',').any(|o| o == name),
            "origin {name} missing: {origins}"
        );
    }
    fwd.stop();
    rev.stop();
}

/// `replication_origin = "off"`: the sink writes without an origin.
fn off_writes_without_origin() {
    let (port, a) = harness::fresh_db("or_off_a");
    let (_, b) = harness::fresh_db("or_off_b");
    psql(&a, DDL);
    psql(&b, DDL);
    psql(
        &a,
        "INSERT INTO t SELECT g, 'a', 0 FROM generate_series(1, 10) g",
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let (config, log) = (dir.path().join("off.toml"), dir.path().join("off.log"));
    write_single(
        &config,
        &harness::url(port, &a),
        "or_off",
        "initial",
        &harness::url(port, &b),
        "replication_origin = \"off\"\n",
    );
    let run = Run::spawn(&config, &log);
    wait_streaming("or_off");
    psql(&a, "INSERT INTO t VALUES (11, 'a', 0)");
    wait_for_run("the row to arrive", 60, &log, || rows(&b) == rows(&a));
    run.stop();
    assert_eq!(
        psql(
            "postgres",
            "SELECT count(*) FROM pg_replication_origin WHERE roname LIKE 'pgbridge_or\\_off.%'"
        ),
        "0"
    );
}
