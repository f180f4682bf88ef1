//! The replication connection against a real server: authentication methods,
//! TLS modes, replication commands and their errors.

use libtest_mimic::Trial;
use pgbridge::pgoutput::{Decoder, Message};
use pgbridge::source::{
    ConnInfo, Connection, Mode, ReplEvent, SnapshotAction, SourceError, StartOptions,
};

use crate::harness::{self, runtime, PASSWORD};
use crate::trial;

pub fn trials() -> Vec<Trial> {
    vec![
        trial("source::auth_methods", auth_methods),
        trial("source::tls_modes", tls_modes),
        trial("source::bad_credentials", bad_credentials),
        trial("source::replication_commands", replication_commands),
        trial("source::raw_copy_out", raw_copy_out),
        trial(
            "source::every_message_kind_decodes",
            every_message_kind_decodes,
        ),
    ]
}

fn pw_url(port: u16, user: &str, db: &str) -> String {
    let pw = percent_encode(PASSWORD);
    format!("postgres://{user}:{pw}@127.0.0.1:{port}/{db}?sslmode=disable")
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

async fn connect(url: &str, mode: Mode) -> Result<Connection, SourceError> {
    Connection::connect(&ConnInfo::parse(url).expect("url"), mode).await
}

fn auth_methods() {
    let (port, db) = harness::fresh_db("auth_methods");
    runtime().block_on(async {
        for user in [
            harness::SCRAM_USER,
            harness::MD5_USER,
            harness::PW_USER,
            "postgres",
        ] {
            for mode in [Mode::Normal, Mode::Replication] {
                let url = if user == "postgres" {
                    harness::url(port, &db)
                } else {
                    pw_url(port, user, &db)
                };
                let mut c = connect(&url, mode)
                    .await
                    .unwrap_or_else(|e| panic!("{user} {mode:?}: {e}"));
                let r = c.query_one("SELECT current_user").await.expect("query");
                assert_eq!(r.rows[0][0].as_deref(), Some(user));
                if mode == Mode::Replication {
                    let sys = c.identify_system().await.expect("IDENTIFY_SYSTEM");
                    assert_eq!(sys.dbname.as_deref(), Some(db.as_str()));
                    assert!(!sys.xlogpos.is_zero());
                }
                c.close().await;
            }
        }
        // key=value form
        let kv = format!(
            "host=127.0.0.1 port={port} dbname={db} user={} password='{}' sslmode=disable",
            harness::SCRAM_USER,
            PASSWORD.replace('\'', "\\'")
        );
        connect(&kv, Mode::Replication).await.expect("key=value");
    });
}

fn tls_modes() {
    let (port, db) = harness::fresh_db("tls_modes");
    let ca = harness::with_cluster(|c| c.ca_cert());
    runtime().block_on(async {
        let user = harness::SSL_USER;
        let base = format!("postgres://{user}@127.0.0.1:{port}/{db}");
        let base_localhost = format!("postgres://{user}@localhost:{port}/{db}");
        // ssl_user is rejected without TLS: each success proves TLS was used.
        let err = connect(&format!("{base}?sslmode=disable"), Mode::Normal)
            .await
            .expect_err("plain must be rejected for ssl_user");
        assert!(
            err.to_string().contains("pg_hba") || err.to_string().contains("reject"),
            "{err}"
        );
        for mode in ["prefer", "require"] {
            let mut c = connect(&format!("{base}?sslmode={mode}"), Mode::Replication)
                .await
                .unwrap_or_else(|e| panic!("sslmode={mode}: {e}"));
            let r = c.query_one("SHOW ssl").await.expect("show ssl");
            assert_eq!(r.rows[0][0].as_deref(), Some("on"));
        }
        let ca = ca.display();
        connect(
            &format!("{base_localhost}?sslmode=verify-full&sslrootcert={ca}"),
            Mode::Replication,
        )
        .await
        .expect("verify-full with the right CA and name");
        connect(
            &format!("{base}?sslmode=verify-ca&sslrootcert={ca}"),
            Mode::Replication,
        )
        .await
        .expect("verify-ca with the right CA");
        // Without our CA the chain cannot verify.
        let err = connect(
            &format!("{base_localhost}?sslmode=verify-full"),
            Mode::Normal,
        )
        .await
        .expect_err("verify-full against unknown CA must fail");
        assert!(matches!(err, SourceError::Tls { .. }), "{err}");
        // require with sslrootcert checks the chain, as libpq (verify-ca):
        // the right CA connects whatever the host name, another one fails.
        connect(
            &format!("{base}?sslmode=require&sslrootcert={ca}"),
            Mode::Replication,
        )
        .await
        .expect("require with the right CA");
        let dir = tempfile::tempdir().expect("tempdir");
        let other = harness::other_ca(dir.path());
        let err = connect(
            &format!("{base}?sslmode=require&sslrootcert={}", other.display()),
            Mode::Replication,
        )
        .await
        .expect_err("require with sslrootcert of another CA must fail");
        assert!(matches!(err, SourceError::Tls { .. }), "{err}");
    });
}

fn bad_credentials() {
    let (port, db) = harness::fresh_db("bad_credentials");
    runtime().block_on(async {
        let wrong = format!(
            "postgres://{}:wrong@127.0.0.1:{port}/{db}?sslmode=disable",
            harness::SCRAM_USER
        );
        let err = connect(&wrong, Mode::Replication)
            .await
            .expect_err("must fail");
        assert!(matches!(err, SourceError::BadPassword { .. }), "{err}");
        assert!(err.to_string().contains("scram_user"), "{err}");

        let md5 = format!(
            "postgres://{}:wrong@127.0.0.1:{port}/{db}?sslmode=disable",
            harness::MD5_USER
        );
        let err = connect(&md5, Mode::Normal).await.expect_err("must fail");
        assert!(matches!(err, SourceError::BadPassword { .. }), "{err}");

        let nopw = format!(
            "postgres://{}@127.0.0.1:{port}/{db}?sslmode=disable",
            harness::SCRAM_USER
        );
        std::env::remove_var("PGPASSWORD");
        let err = connect(&nopw, Mode::Normal).await.expect_err("must fail");
        assert!(matches!(err, SourceError::NoPassword { .. }), "{err}");

        let norepl = pw_url(port, harness::NOREPL_USER, &db);
        let err = connect(&norepl, Mode::Replication)
            .await
            .expect_err("must fail");
        assert!(
            matches!(err, SourceError::NoReplicationPrivilege { .. }),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains("ALTER ROLE norepl_user REPLICATION"),
            "{err}"
        );

        let nodb = harness::url(port, "no_such_db");
        let err = connect(&nodb, Mode::Replication)
            .await
            .expect_err("must fail");
        assert!(matches!(err, SourceError::NoDatabase { .. }), "{err}");

        let closed = format!(
            "postgres://postgres@127.0.0.1:{}/x",
            pgbridge::cluster::free_port()
        );
        let err = connect(&closed, Mode::Normal).await.expect_err("must fail");
        assert!(matches!(err, SourceError::Connect { .. }), "{err}");
        assert!(err.is_transient());
    });
}

fn replication_commands() {
    let (port, db) = harness::fresh_db("replication_commands");
    runtime().block_on(async {
        let url = harness::url(port, &db);
        let mut c = connect(&url, Mode::Replication).await.expect("connect");
        c.check_wal_level().await.expect("wal_level logical");
        let created = c
            .create_slot("rc_slot", false, SnapshotAction::NoExport)
            .await
            .expect("create slot");
        assert!(!created.consistent_point.is_zero());
        assert!(created.snapshot_name.is_none());
        let err = c
            .create_slot("rc_slot", false, SnapshotAction::NoExport)
            .await
            .expect_err("duplicate slot");
        assert_eq!(err.code(), Some("42710"), "{err}");
        let info = c
            .slot_info("rc_slot")
            .await
            .expect("slot info")
            .expect("exists");
        assert_eq!(info.plugin.as_deref(), Some("pgoutput"));
        c.check_slot_usable("rc_slot", &info).expect("usable");
        assert_eq!(info.confirmed_flush, created.consistent_point);

        let mut c2 = connect(&url, Mode::Replication).await.expect("connect 2");
        let exported = c2
            .create_slot("rc_export", true, SnapshotAction::Export)
            .await
            .expect("export snapshot");
        assert!(exported.snapshot_name.is_some());

        c.drop_slot("rc_slot", true).await.expect("drop");
        let err = c
            .drop_slot("rc_slot", false)
            .await
            .expect_err("already gone");
        assert!(matches!(err, SourceError::SlotMissing { .. }), "{err}");
        let err = c
            .check_publications(&["nope".to_string()])
            .await
            .expect_err("missing publication");
        assert!(err.to_string().contains("\"nope\""), "{err}");
    });
}

/// The copy's COPY OUT reader: the bytes it coalesces equal the server's
/// rows exactly (a 3 MB row spans many socket reads), what it returns at a
/// time is whole rows within the limit or one larger row alone (so a
/// forwarded message never exceeds a row the server could send), a server
/// error in the middle of the COPY is returned and leaves the connection
/// usable.
fn raw_copy_out() {
    let (port, db) = harness::fresh_db("raw_copy_out");
    runtime().block_on(async {
        let url = harness::url(port, &db);
        let mut c = connect(&url, Mode::Normal).await.expect("connect");
        let sql = "COPY (SELECT g, CASE WHEN g = 700 THEN repeat('y', 3000000) \
                   ELSE repeat('x', g % 50) END FROM generate_series(1, 2000) g) TO STDOUT";
        let mut expected = String::new();
        for g in 1..=2000 {
            let v = if g == 700 {
                "y".repeat(3_000_000)
            } else {
                "x".repeat(g % 50)
            };
            expected.push_str(&format!("{g}\t{v}\n"));
        }
        for max in [1, 1000, 64 * 1024, 16 << 20] {
            c.start_copy_out(sql).await.expect("start copy");
            let mut all = Vec::new();
            let mut buf = bytes::BytesMut::new();
            let mut reads = 0;
            let mut largest = 0;
            loop {
                let more = c.read_copy_out(&mut buf, max).await.expect("read copy");
                reads += 1;
                let rows = buf.iter().filter(|&&b| b == b'\n').count();
                assert!(
                    buf.ends_with(b"\n") || buf.is_empty(),
                    "max {max}: a row was cut"
                );
                assert!(
                    buf.len() <= max || rows == 1,
                    "max {max}: {} bytes in {rows} rows",
                    buf.len()
                );
                assert!(
                    !more || !buf.is_empty(),
                    "max {max}: more, but nothing read"
                );
                largest = largest.max(buf.len());
                all.extend_from_slice(&buf.split());
                if !more {
                    break;
                }
            }
            assert_eq!(all.len(), expected.len(), "max {max}");
            assert!(all == expected.as_bytes(), "max {max}: bytes differ");
            assert!(largest > 3_000_000, "the 3 MB row came whole");
            if max == 64 * 1024 {
                assert!(
                    reads < 2000,
                    "max {max}: rows were coalesced ({reads} reads)"
                );
            }
        }
        c.start_copy_out("COPY (SELECT 1 / (1000 - g) FROM generate_series(1, 2000) g) TO STDOUT")
            .await
            .expect("start failing copy");
        let mut buf = bytes::BytesMut::new();
        let err = loop {
            match c.read_copy_out(&mut buf, 1).await {
                Ok(true) => buf.clear(),
                Ok(false) => panic!("the failing COPY ended without an error"),
                Err(e) => break e,
            }
        };
        assert_eq!(err.code(), Some("22012"), "{err}");
        let err = c.start_copy_out("SELECT 1").await.expect_err("not a COPY");
        assert!(err.to_string().contains("COPY TO STDOUT"), "{err}");
        let err = c
            .start_copy_out("COPY nope TO STDOUT")
            .await
            .expect_err("missing table");
        assert_eq!(err.code(), Some("42P01"), "{err}");
        let r = c
            .query_one("SELECT 41 + 1 AS x")
            .await
            .expect("usable after errors");
        assert_eq!(r.get(0, "x"), Some("42"));
    });
}

/// Real server bytes for every pgoutput message kind, two-phase included
/// (which pgbridge's consumers do not request), through the decoder.
fn every_message_kind_decodes() {
    let (port, db) = harness::fresh_db("every_kind");
    harness::psql(
        &db,
        "CREATE TYPE e AS ENUM ('x');
         CREATE TABLE k (id int PRIMARY KEY, v text, e e);
         CREATE TABLE k2 (id int PRIMARY KEY);
         CREATE PUBLICATION p FOR TABLE k, k2;",
    );
    harness::psql(
        &db,
        "SELECT pg_create_logical_replication_slot('every_kind', 'pgoutput', false, true)",
    );
    let url = harness::url(port, &db);
    let seen = runtime().block_on(async {
        let conn = connect(&url, Mode::Replication).await.expect("connect");
        let mut opts = StartOptions::new("every_kind", vec!["p".into()], 3);
        opts.two_phase = true;
        let mut stream = conn
            .start_replication(opts, pgbridge::Lsn::ZERO)
            .await
            .expect("start");
        let workload = [
            "INSERT INTO k VALUES (1, 'a', 'x')",
            "UPDATE k SET v = 'b'",
            "UPDATE k SET id = 2",
            "DELETE FROM k",
            "TRUNCATE k, k2 RESTART IDENTITY CASCADE",
            "SELECT pg_logical_emit_message(true, 'p', 'c')",
            "SELECT pg_logical_emit_message(false, 'p', 'c')",
            "SELECT pg_replication_origin_create('o'); SELECT pg_replication_origin_session_setup('o'); INSERT INTO k2 VALUES (1)",
            "BEGIN; INSERT INTO k VALUES (10, 'p'); PREPARE TRANSACTION 'a'",
            "COMMIT PREPARED 'a'",
            "BEGIN; INSERT INTO k VALUES (11, 'p'); PREPARE TRANSACTION 'b'",
            "ROLLBACK PREPARED 'b'",
            "BEGIN; INSERT INTO k SELECT g, repeat('s', 50) FROM generate_series(100, 3000) g; COMMIT",
            "BEGIN; INSERT INTO k SELECT g, 'gone' FROM generate_series(5000, 8000) g; SAVEPOINT s; INSERT INTO k SELECT g, 'gone' FROM generate_series(9000, 12000) g; ROLLBACK TO s; ROLLBACK",
            "BEGIN; INSERT INTO k SELECT g, repeat('t', 50) FROM generate_series(20000, 23000) g; PREPARE TRANSACTION 'c'",
            "COMMIT PREPARED 'c'",
            "SELECT pg_logical_emit_message(false, 'end', '')",
        ];
        for sql in workload {
            harness::psql(&db, sql);
        }
        let mut decoder = Decoder::new();
        let mut seen = std::collections::BTreeSet::new();
        loop {
            let ev = tokio::time::timeout(std::time::Duration::from_secs(30), stream.recv())
                .await
                .expect("stream stalled")
                .expect("stream open")
                .expect("no error");
            let ReplEvent::XLogData { data, .. } = ev else {
                continue;
            };
            let msg = decoder.decode(&data).expect("decodes");
            let end = matches!(&msg, Message::Message(m) if m.prefix == "end");
            seen.insert(format!("{:?}", msg).split(['(', ' ']).next().unwrap_or("").to_string());
            if end {
                break;
            }
        }
        stream.shutdown().await.expect("shutdown");
        seen
    });
    for kind in [
        "Begin",
        "Commit",
        "Origin",
        "Relation",
        "Type",
        "Insert",
        "Update",
        "Delete",
        "Truncate",
        "Message",
        "StreamStart",
        "StreamStop",
        "StreamCommit",
        "StreamAbort",
        "BeginPrepare",
        "Prepare",
        "CommitPrepared",
        "RollbackPrepared",
        "StreamPrepare",
    ] {
        assert!(seen.contains(kind), "{kind} not seen; saw {seen:?}");
    }
    harness::psql("postgres", "SELECT pg_drop_replication_slot('every_kind')");
}
