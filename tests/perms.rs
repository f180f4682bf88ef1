//! Privileges: `pgbridge check` names every grant `run` needs and lacks
//! (one line per problem, the object and the GRANT), `run` names the grant
//! when it meets a missing one, and a user given only a pre-made
//! `pgbridge` schema (no CREATE on the database) can run.

use std::process::Command;

use libtest_mimic::Trial;

use crate::harness::bridge::{
    run_streaming, spawn_run, stop_run, wait_exit, wait_for, write_single,
};
use crate::harness::{self, psql};
use crate::trial;

pub fn trials() -> Vec<Trial> {
    vec![
        trial(
            "perms::check_names_missing_grants",
            check_names_missing_grants,
        ),
        trial("perms::run_names_the_grant", run_names_the_grant),
        trial("perms::premade_schema_is_enough", premade_schema_is_enough),
        trial("perms::hot_standby_target", hot_standby_target),
    ]
}

fn user_url(port: u16, user: &str, db: &str) -> String {
    format!("postgres://{user}@127.0.0.1:{port}/{db}?sslmode=disable")
}

/// `pgbridge check` on `config`: (success, stdout).
fn check(config: &std::path::Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pgbridge"))
        .args(["check", "--config"])
        .arg(config)
        .output()
        .expect("run check");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// A line of `out` that contains every one of `parts`.
fn has_line(out: &str, parts: &[&str]) -> bool {
    out.lines().any(|l| parts.iter().all(|p| l.contains(p)))
}

/// A source user without SELECT on a published table; a target user
/// without CREATE on the database, without TRUNCATE on one table and
/// without anything on another; a pre-made `pgbridge` schema with USAGE
/// only; a read-only target (`default_transaction_read_only`): each is
/// one line naming the object and the GRANT (or setting) that fixes it,
/// and the exit status is 1. With the grants given, the same
/// configuration passes.
fn check_names_missing_grants() {
    let (port, src) = harness::fresh_db("pm_chk_src");
    let (_, dst) = harness::fresh_db("pm_chk_dst");
    let (_, pre) = harness::fresh_db("pm_chk_pre");
    let (_, ro) = harness::fresh_db("pm_chk_ro");
    psql(
        "postgres",
        "CREATE ROLE pm_chk_src LOGIN REPLICATION;
         CREATE ROLE pm_chk_dst LOGIN;
         CREATE ROLE pm_chk_ro LOGIN;
         ALTER ROLE pm_chk_ro SET default_transaction_read_only = on;",
    );
    psql(
        &src,
        "CREATE TABLE t (id int PRIMARY KEY, v text);
         CREATE TABLE u (id int PRIMARY KEY);
         CREATE PUBLICATION p FOR TABLE t, u;
         GRANT SELECT ON u TO pm_chk_src;",
    );
    let tables =
        "CREATE TABLE t (id int PRIMARY KEY, v text); CREATE TABLE u (id int PRIMARY KEY);";
    psql(
        &dst,
        &format!("{tables} GRANT SELECT, INSERT, UPDATE, DELETE ON t TO pm_chk_dst;"),
    );
    psql(
        &pre,
        &format!(
            "{tables} GRANT ALL ON t, u TO pm_chk_dst;
             CREATE SCHEMA pgbridge; GRANT USAGE ON SCHEMA pgbridge TO pm_chk_dst;"
        ),
    );
    psql(
        &ro,
        &format!(
            "{tables} GRANT ALL ON t, u TO pm_chk_ro; GRANT CREATE ON DATABASE {ro} TO pm_chk_ro;"
        ),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("pgbridge.toml");
    let sink = |name: &str, user: &str, db: &str| {
        format!(
            "\n[[sink]]\nname = \"{name}\"\ntype = \"postgres\"\nurl = \"{}\"\nsession_replication_role = \"origin\"\n",
            user_url(port, user, db)
        )
    };
    let source = format!(
        "[source]\nurl = \"{}\"\nslot = \"pm_chk\"\npublications = [\"p\"]\n",
        user_url(port, "pm_chk_src", &src)
    );
    std::fs::write(
        &config,
        format!(
            "{source}{}{}{}",
            sink("d", "pm_chk_dst", &dst),
            sink("pre", "pm_chk_dst", &pre),
            sink("ro", "pm_chk_ro", &ro)
        ),
    )
    .expect("config");
    let (ok, out) = check(&config);
    assert!(!ok, "{out}");
    for (what, parts) in [
        (
            "source SELECT",
            &[
                "source:",
                "public.t",
                "GRANT SELECT ON public.t TO pm_chk_src",
            ][..],
        ),
        (
            "CREATE on the target database",
            &[
                "sink d:",
                "schema pgbridge",
                &format!("GRANT CREATE ON DATABASE {dst} TO pm_chk_dst"),
            ],
        ),
        (
            "TRUNCATE",
            &["sink d:", "GRANT TRUNCATE ON public.t TO pm_chk_dst"],
        ),
        (
            "every table privilege",
            &[
                "sink d:",
                "GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON public.u TO pm_chk_dst",
            ],
        ),
        (
            "CREATE on the pre-made schema",
            &["sink pre:", "GRANT CREATE ON SCHEMA pgbridge TO pm_chk_dst"],
        ),
        (
            "read-only target",
            &[
                "sink ro:",
                "read-only",
                "default_transaction_read_only = off",
            ],
        ),
    ] {
        assert!(
            has_line(&out, parts),
            "no line for {what} ({parts:?}) in:\n{out}"
        );
    }
    assert!(
        !has_line(&out, &["sink pre:", "ON DATABASE"]),
        "a pre-made schema needs no CREATE on the database:\n{out}"
    );
    assert!(
        !has_line(&out, &["source:", "public.u"]),
        "SELECT on u was granted:\n{out}"
    );

    // With the grants the lines named, the source and sink d pass.
    psql(&src, "GRANT SELECT ON t TO pm_chk_src");
    psql(
        &dst,
        &format!("GRANT CREATE ON DATABASE {dst} TO pm_chk_dst; GRANT ALL ON t, u TO pm_chk_dst"),
    );
    std::fs::write(
        &config,
        format!("{source}{}", sink("d", "pm_chk_dst", &dst)),
    )
    .expect("config");
    let (ok, out) = check(&config);
    assert!(ok, "check after the grants:\n{out}");
}

/// `run` stops naming the grants: before the initial copy (source SELECT,
/// target TRUNCATE), and while streaming (an insert the target user may
/// not make).
fn run_names_the_grant() {
    let (port, src) = harness::fresh_db("pm_run_src");
    let (_, dst) = harness::fresh_db("pm_run_dst");
    psql(
        "postgres",
        "CREATE ROLE pm_run_src LOGIN REPLICATION; CREATE ROLE pm_run_dst LOGIN;",
    );
    psql(
        &src,
        "CREATE TABLE t (id int PRIMARY KEY, v text);
         INSERT INTO t VALUES (1, 'a');
         CREATE PUBLICATION p FOR TABLE t;",
    );
    psql(
        &dst,
        &format!(
            "CREATE TABLE t (id int PRIMARY KEY, v text);
             GRANT SELECT, INSERT, UPDATE, DELETE ON t TO pm_run_dst;
             GRANT CREATE ON DATABASE {dst} TO pm_run_dst;"
        ),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("pgbridge.toml");
    let log = dir.path().join("pgbridge.log");
    let write = |snapshot: &str| {
        write_single(
            &config,
            &user_url(port, "pm_run_src", &src),
            "pm_run",
            snapshot,
            &user_url(port, "pm_run_dst", &dst),
            "session_replication_role = \"origin\"\n",
        )
    };
    write("initial");
    let status = wait_exit(spawn_run(&config, &log), &log, "run did not stop");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!status.success(), "{text}");
    assert!(
        text.contains("GRANT SELECT ON public.t TO pm_run_src"),
        "the source grant:\n{text}"
    );
    assert!(
        text.contains("GRANT TRUNCATE ON public.t TO pm_run_dst"),
        "the target grant:\n{text}"
    );
    assert_eq!(psql(&dst, "SELECT count(*) FROM t"), "0");
    psql("postgres", "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = 'pm_run'");

    // Streaming: the target user may not insert.
    psql(&src, "GRANT SELECT ON t TO pm_run_src");
    psql(&dst, "REVOKE INSERT ON t FROM pm_run_dst");
    write("never");
    std::fs::remove_file(&log).ok();
    let child = run_streaming(&config, &log, "pm_run");
    psql(&src, "INSERT INTO t VALUES (2, 'b')");
    let status = wait_exit(child, &log, "run did not stop on the insert");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!status.success(), "{text}");
    assert!(
        text.contains("GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON public.t TO pm_run_dst"),
        "the apply's grant:\n{text}"
    );
    psql("postgres", "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = 'pm_run'");
}

/// A target user without CREATE on the database runs once an
/// administrator made the `pgbridge` schema for it (USAGE, CREATE), as
/// the errors and the README advise: neither the copy's state nor the
/// sink's progress asks for CREATE on the database when the schema is
/// there. `check` agrees beforehand.
fn premade_schema_is_enough() {
    let (port, src) = harness::fresh_db("pm_pre_src");
    let (_, dst) = harness::fresh_db("pm_pre_dst");
    psql("postgres", "CREATE ROLE pm_pre LOGIN");
    psql(
        &src,
        "CREATE TABLE t (id int PRIMARY KEY, v text);
         INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 500) g;
         CREATE PUBLICATION p FOR TABLE t;",
    );
    psql(
        &dst,
        "CREATE TABLE t (id int PRIMARY KEY, v text);
         GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON t TO pm_pre;
         CREATE SCHEMA pgbridge; GRANT USAGE, CREATE ON SCHEMA pgbridge TO pm_pre;",
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("pgbridge.toml");
    let log = dir.path().join("pgbridge.log");
    write_single(
        &config,
        &harness::url(port, &src),
        "pm_pre",
        "initial",
        &user_url(port, "pm_pre", &dst),
        "session_replication_role = \"origin\"\n",
    );
    let (ok, out) = check(&config);
    assert!(ok, "check:\n{out}");
    for round in 0..2 {
        let child = run_streaming(&config, &log, "pm_pre");
        psql(
            &src,
            &format!("INSERT INTO t VALUES ({}, 'new')", 1000 + round),
        );
        wait_for("the copy and the streamed row", 60, || {
            psql(&dst, "SELECT count(*) FROM t") == (501 + round).to_string()
        });
        let status = stop_run(child);
        assert!(
            status.success(),
            "{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
    psql("postgres", "SELECT pg_drop_replication_slot('pm_pre')");
}

/// A hot standby of a cluster of the test's own, stopped on drop.
struct Standby {
    dir: tempfile::TempDir,
    bin: std::path::PathBuf,
    port: u16,
}

fn as_postgres(bin: &std::path::Path, prog: &str) -> Command {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin.join(prog));
        c
    } else {
        Command::new(bin.join(prog))
    }
}

impl Standby {
    fn start(primary: &pgbridge::cluster::LocalCluster) -> Standby {
        let dir = tempfile::tempdir().expect("tempdir");
        let _ = Command::new("chown")
            .arg("postgres:postgres")
            .arg(dir.path())
            .status();
        let data = dir.path().join("data");
        let out = as_postgres(primary.bin_dir(), "pg_basebackup")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &primary.port().to_string(),
                "-U",
                "postgres",
                "-R",
                "-c",
                "fast",
                "-D",
            ])
            .arg(&data)
            .output()
            .expect("pg_basebackup");
        assert!(
            out.status.success(),
            "pg_basebackup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = pgbridge::cluster::free_port();
        let out = as_postgres(primary.bin_dir(), "pg_ctl")
            .arg("-D")
            .arg(&data)
            .arg("-o")
            .arg(format!(
                "-p {port} -c unix_socket_directories={}",
                dir.path().display()
            ))
            .arg("-l")
            .arg(dir.path().join("log"))
            .args(["-w", "start"])
            .output()
            .expect("pg_ctl start");
        assert!(
            out.status.success(),
            "standby start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Standby {
            dir,
            bin: primary.bin_dir().to_path_buf(),
            port,
        }
    }
}

impl Drop for Standby {
    fn drop(&mut self) {
        let _ = as_postgres(&self.bin, "pg_ctl")
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "stop"])
            .output();
    }
}

/// A sink pointed at a hot standby: `check` says so and names the fix,
/// and `run` stops with the read-only error and how to reach a writable
/// server.
fn hot_standby_target() {
    let primary =
        pgbridge::cluster::LocalCluster::start(&Default::default()).expect("start a cluster");
    for sql in ["CREATE DATABASE src", "CREATE DATABASE dst"] {
        primary.psql("postgres", sql).expect("create db");
    }
    primary
        .psql(
            "src",
            "CREATE TABLE t (id int PRIMARY KEY); CREATE PUBLICATION p FOR TABLE t;",
        )
        .expect("source");
    primary
        .psql("dst", "CREATE TABLE t (id int PRIMARY KEY)")
        .expect("target");
    let standby = Standby::start(&primary);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("pgbridge.toml");
    let log = dir.path().join("pgbridge.log");
    write_single(
        &config,
        &primary.url("src", "postgres"),
        "pm_sb",
        "initial",
        &user_url(standby.port, "postgres", "dst"),
        "",
    );
    let (ok, out) = check(&config);
    assert!(!ok, "{out}");
    assert!(
        has_line(
            &out,
            &[
                "sink d:",
                "hot standby",
                "point the sink's url at the primary"
            ]
        ),
        "{out}"
    );
    let status = wait_exit(spawn_run(&config, &log), &log, "run on a standby");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!status.success(), "{text}");
    assert!(
        text.contains("read-only") && text.contains("point the url at the primary"),
        "{text}"
    );
    drop(standby);
}
