//! `pgbridge sync-sequences` at a cutover: rows replicated by `run`, then
//! the target's sequences set from the source, so the new primary's next
//! `INSERT ... DEFAULT` does not collide with a replicated key.

use libtest_mimic::Trial;

use crate::harness::bridge::{run_streaming, run_sync_sequences, stop_run, wait_for};
use crate::harness::{self, psql};
use crate::trial;

pub fn trials() -> Vec<Trial> {
    vec![trial(
        "sequences::cutover_moves_target_sequences_forward",
        cutover_moves_target_sequences_forward,
    )]
}

/// Every kind of use: serial (OWNED BY), identity, a shared sequence in a
/// default, a descending one; plus a table outside the publication.
const DDL: &str = "
CREATE TABLE a (id serial PRIMARY KEY, v text);
CREATE TABLE b (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text);
CREATE SEQUENCE shared;
CREATE TABLE c (id bigint PRIMARY KEY DEFAULT nextval('shared'), v text);
CREATE SEQUENCE down INCREMENT BY -1;
CREATE TABLE e (id bigint PRIMARY KEY DEFAULT nextval('down'), v text);
CREATE TABLE z (id serial PRIMARY KEY, v text);";

fn seq(db: &str, name: &str) -> String {
    psql(
        db,
        &format!("SELECT last_value || ' ' || is_called FROM {name}"),
    )
}

fn cutover_moves_target_sequences_forward() {
    let (port, src) = harness::fresh_db("seq_src");
    let (_, dst) = harness::fresh_db("seq_dst");
    let (_, other) = harness::fresh_db("seq_other");
    psql(
        &src,
        &format!("{DDL} CREATE PUBLICATION p FOR TABLE a, b, c, e;"),
    );
    psql(&dst, DDL);
    let rows = "INSERT INTO a (v) SELECT 'a' FROM generate_series(1, 5); \
                INSERT INTO b (v) SELECT 'b' FROM generate_series(1, 3); \
                INSERT INTO c (v) SELECT 'c' FROM generate_series(1, 7); \
                INSERT INTO e (v) SELECT 'e' FROM generate_series(1, 4); \
                INSERT INTO z (v) SELECT 'z' FROM generate_series(1, 9);";
    psql(&src, rows);
    // Something already drew from b's sequence on the target, further
    // than the source: it must not be moved back.
    psql(&dst, "SELECT setval('b_id_seq', 100)");

    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("pgbridge.toml");
    let log = dir.path().join("pgbridge.log");
    std::fs::write(
        &config,
        format!(
            "[source]\nurl = \"{}\"\nslot = \"seq_cut\"\npublications = [\"p\"]\n\n\
             [[sink]]\nname = \"new_primary\"\ntype = \"postgres\"\nurl = \"{}\"\n\n\
             [[sink]]\nname = \"analytics\"\ntype = \"postgres\"\nurl = \"{}\"\n\
             tables = [\"public.a\"]\ncreate_tables = true\n",
            harness::url(port, &src),
            harness::url(port, &dst),
            harness::url(port, &other),
        ),
    )
    .expect("write config");

    // Before any run: unknown sink names are refused.
    let out = run_sync_sequences(&config, &["--sink", "nope"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("no sink named nope") && err.contains("new_primary"),
        "{err}"
    );

    // Copy, then stream more rows; stop the writes and let it converge.
    let child = run_streaming(&config, &log, "seq_cut");
    psql(&src, rows);
    // Identity columns GENERATED ALWAYS refuse explicit values in INSERT
    // and UPDATE; the sink must still apply both.
    psql(&src, "UPDATE b SET v = 'updated' WHERE id = 2");
    psql(&src, "DELETE FROM b WHERE id = 1");
    let count = |db: &str, t: &str| psql(db, &format!("SELECT count(*) FROM {t}"));
    wait_for("the target to converge", 60, || {
        ["a", "b", "c", "e"]
            .iter()
            .all(|t| count(&dst, t) == count(&src, t))
            && count(&other, "a") == count(&src, "a")
    });
    wait_for("the update of b", 30, || {
        psql(&dst, "SELECT string_agg(id || v, ',' ORDER BY id) FROM b")
            == psql(&src, "SELECT string_agg(id || v, ',' ORDER BY id) FROM b")
    });
    assert!(stop_run(child).success());
    // Replication carried the rows, not the sequences.
    assert_eq!(seq(&dst, "a_id_seq"), "1 false");

    let out = run_sync_sequences(&config, &[]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(seq(&dst, "a_id_seq"), seq(&src, "a_id_seq"), "{text}");
    assert_eq!(seq(&dst, "a_id_seq"), "10 true", "{text}");
    assert_eq!(seq(&dst, "shared"), "14 true", "{text}");
    assert_eq!(seq(&dst, "down"), "-8 true", "{text}");
    assert_eq!(
        seq(&dst, "b_id_seq"),
        "100 true",
        "kept, not moved back: {text}"
    );
    assert_eq!(seq(&dst, "z_id_seq"), "1 false", "not published: {text}");
    assert!(
        text.contains("sink new_primary: 3 sequence(s) moved forward, 1 already there or ahead"),
        "{text}"
    );
    // The sink limited to table a knows only a's sequence, which its
    // created table does not have.
    assert!(
        text.contains("sink analytics: sequence public.a_id_seq (used by public.a) is not on the target; skipped"),
        "{text}"
    );
    assert!(
        !text.contains("sink analytics: sequence public.shared"),
        "{text}"
    );

    // The new primary takes inserts without a duplicate key.
    assert_eq!(
        psql(&dst, "INSERT INTO a (v) VALUES ('new') RETURNING id"),
        "11"
    );
    assert_eq!(
        psql(&dst, "INSERT INTO c (v) VALUES ('new') RETURNING id"),
        "15"
    );
    assert_eq!(
        psql(&dst, "INSERT INTO e (v) VALUES ('new') RETURNING id"),
        "-9"
    );

    // Again: nothing moves back, not even a's (the target drew from it).
    let out = run_sync_sequences(&config, &["--sink", "new_primary"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("sink new_primary: 0 sequence(s) moved forward, 4 already there or ahead"),
        "{text}"
    );
    assert!(!text.contains("sink analytics"), "{text}");
    assert_eq!(seq(&dst, "a_id_seq"), "11 true");
    psql("postgres", "SELECT pg_drop_replication_slot('seq_cut')");

    // A source user that may read only some sequences: the rest are
    // errors naming the grant, and the command fails.
    psql(
        "postgres",
        "DO $$ BEGIN CREATE ROLE seq_reader LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$",
    );
    psql(&src, "GRANT SELECT ON SEQUENCE a_id_seq TO seq_reader");
    let text = std::fs::read_to_string(&config).expect("config");
    let limited = dir.path().join("limited.toml");
    std::fs::write(
        &limited,
        text.replacen("postgres://postgres@", "postgres://seq_reader@", 1),
    )
    .expect("write config");
    let out = run_sync_sequences(&limited, &["--sink", "new_primary"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains(
            "source: cannot read sequence public.shared (used by public.c): permission denied"
        ) && text.contains("GRANT SELECT ON SEQUENCE \"public\".\"shared\""),
        "{text}"
    );
    assert!(
        text.contains(
            "sink new_primary: sequence public.a_id_seq (used by public.a): next value 12, ahead"
        ),
        "{text}"
    );
}
