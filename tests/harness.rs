//! Shared fixtures: one PostgreSQL cluster per test binary (started on first
//! use, stopped at the end of `main`), one database per test; the
//! `pgbridge` binary run as the tests need it ([`bridge`]); tansu brokers
//! and topics read back ([`kafka`]).
//!
//! [`config`], [`run`] and [`tansu`] are shared with the end-to-end
//! benchmark (`benches/pipeline/main.rs` includes them by path): they use
//! nothing of the test binary.

pub mod bridge;
pub mod config;
pub mod kafka;
pub mod run;
pub mod tansu;

use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use pgbridge::cluster::{ClusterOptions, LocalCluster};

static CLUSTER: OnceLock<Mutex<Option<LocalCluster>>> = OnceLock::new();

pub const SCRAM_USER: &str = "scram_user";
pub const MD5_USER: &str = "md5_user";
pub const PW_USER: &str = "pw_user";
pub const SSL_USER: &str = "ssl_user";
pub const NOREPL_USER: &str = "norepl_user";
pub const PASSWORD: &str = "s3cret pa:ss";

fn start() -> LocalCluster {
    let mut hba = Vec::new();
    for (user, method) in [
        (SCRAM_USER, "scram-sha-256"),
        (MD5_USER, "md5"),
        (PW_USER, "password"),
        (NOREPL_USER, "scram-sha-256"),
    ] {
        hba.push(format!("host all {user} 127.0.0.1/32 {method}"));
        hba.push(format!("host replication {user} 127.0.0.1/32 {method}"));
    }
    hba.push(format!("hostnossl all {SSL_USER} 127.0.0.1/32 reject"));
    hba.push(format!("hostssl all {SSL_USER} 127.0.0.1/32 trust"));
    let opts = ClusterOptions {
        hba,
        ssl: true,
        conf: vec![
            "logical_decoding_work_mem = 64kB".into(),
            "max_prepared_transactions = 10".into(),
        ],
        ..Default::default()
    };
    let c = LocalCluster::start(&opts).expect("start the test cluster");
    let pw = PASSWORD.replace('\'', "''");
    c.psql(
        "postgres",
        &format!(
            "CREATE ROLE {SCRAM_USER} LOGIN REPLICATION SUPERUSER PASSWORD '{pw}';
             SET password_encryption = 'md5';
             CREATE ROLE {MD5_USER} LOGIN REPLICATION SUPERUSER PASSWORD '{pw}';
             RESET password_encryption;
             CREATE ROLE {PW_USER} LOGIN REPLICATION SUPERUSER PASSWORD '{pw}';
             CREATE ROLE {SSL_USER} LOGIN REPLICATION SUPERUSER;
             CREATE ROLE {NOREPL_USER} LOGIN PASSWORD '{pw}';"
        ),
    )
    .expect("create test roles");
    c
}

/// Runs `f` with the shared cluster.
pub fn with_cluster<R>(f: impl FnOnce(&LocalCluster) -> R) -> R {
    let lock = CLUSTER.get_or_init(|| Mutex::new(None));
    let mut guard = lock.lock().unwrap_or_else(|e| e.into_inner());
    if guard.is_none() {
        *guard = Some(start());
    }
    f(guard.as_ref().expect("cluster started"))
}

/// Stops the shared cluster (end of the test run).
pub fn shutdown() {
    if let Some(lock) = CLUSTER.get() {
        let mut guard = lock.lock().unwrap_or_else(|e| e.into_inner());
        guard.take();
    }
}

/// A fresh database named after the test; returns (port, dbname).
pub fn fresh_db(name: &str) -> (u16, String) {
    with_cluster(|c| {
        let db = format!("t_{name}");
        c.psql(
            "postgres",
            &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
        )
        .expect("drop db");
        c.psql("postgres", &format!("CREATE DATABASE {db}"))
            .expect("create db");
        (c.port(), db)
    })
}

/// psql as superuser on the shared cluster.
pub fn psql(db: &str, sql: &str) -> String {
    with_cluster(|c| c.psql(db, sql)).unwrap_or_else(|e| panic!("{e}"))
}

pub fn url(port: u16, db: &str) -> String {
    format!("postgres://postgres@127.0.0.1:{port}/{db}?sslmode=disable")
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A CA certificate that did not sign the test cluster's certificate
/// (made with openssl in `dir`).
pub fn other_ca(dir: &std::path::Path) -> std::path::PathBuf {
    let out = std::process::Command::new("openssl")
        .args([
            "req",
            "-new",
            "-x509",
            "-days",
            "3",
            "-nodes",
            "-subj",
            "/CN=some other CA",
        ])
        .arg("-keyout")
        .arg(dir.join("other-ca.key"))
        .arg("-out")
        .arg(dir.join("other-ca.crt"))
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir.join("other-ca.crt")
}

/// PostgreSQL 17's server binaries: `$PGBRIDGE_PG17_BIN`, else where
/// scripts/deps.sh puts them (`$PGBRIDGE_PG17_DIR/bin`).
pub fn pg17_bin() -> PathBuf {
    let bin = std::env::var("PGBRIDGE_PG17_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            std::env::var("PGBRIDGE_PG17_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|_| PathBuf::from("/opt/pgbridge/postgresql-17"))
                .join("bin")
        });
    assert!(
        bin.join("postgres").is_file(),
        "no PostgreSQL 17 server in {}: run scripts/deps.sh (or set PGBRIDGE_PG17_BIN)",
        bin.display()
    );
    bin
}
