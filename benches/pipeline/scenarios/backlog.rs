//! backlog: a replication backlog written while every contender's slot
//! exists, then replayed by each contender from its own slot.

use std::time::Instant;

use crate::contenders::{native, pgbridge, recvlogical};
use crate::db::Db;
use crate::env::{fresh_target, settle, Env};
use crate::report::Report;
use crate::scenarios::scaled;
use crate::R;

/// The backlog's table (also the kafka and memory parts').
pub const BL_TABLE: &str =
    "CREATE TABLE bl (id bigserial PRIMARY KEY, a int NOT NULL, b text NOT NULL, \
                        c timestamptz NOT NULL, d numeric NOT NULL)";

/// Shape (b)'s five secondary indexes on the target.
const BL_INDEXES: &str = "CREATE INDEX ON bl (a); CREATE INDEX ON bl (b); CREATE INDEX ON bl (c); \
                          CREATE INDEX ON bl (d); CREATE INDEX ON bl (a, c);";

/// The backlog as written: its shape, end LSN, WAL size and rows left.
pub struct Written {
    pub singles: u64,
    pub big: u64,
    pub updates: u64,
    pub deletes: u64,
    pub end: String,
    pub wal: f64,
    pub rows: u64,
    /// Positions after the singles, the big transaction and the updates.
    pub phases: Vec<(&'static str, String)>,
}

impl Written {
    /// Changes in the backlog (inserts, updates, deletes).
    pub fn changes(&self) -> u64 {
        self.singles + self.big + self.updates + self.deletes
    }

    /// The report's line describing the backlog.
    pub fn header(&self) -> String {
        format!(
            "{} one-row INSERT txns, 1 txn of {} rows, {} one-row UPDATE txns, \
             {} one-row DELETE txns = {} txns, {:.0} MB WAL; {} rows remain",
            self.singles,
            self.big,
            self.updates,
            self.deletes,
            self.singles + 1 + self.updates + self.deletes,
            self.wal / 1e6,
            self.rows
        )
    }
}

/// Writes the backlog into table `bl` of `src` (its slots exist already).
pub async fn write_backlog(src: &Db, s: f64, spread: bool) -> R<Written> {
    let singles = scaled(100_000, s);
    let big = scaled(500_000, s);
    let total = singles + big;
    let updates = total / 10;
    let deletes = total / 20;
    let start: String = src.value("SELECT pg_current_wal_lsn()::text").await?;
    eprintln!(
        "backlog: {singles} one-row inserts, one {big}-row insert, \
         {updates} one-row updates, {deletes} one-row deletes"
    );
    let t0 = Instant::now();
    // The values of a, c and d for row number `n`: rising with it, or
    // (--spread-keys) random.
    let values = |n: &str| {
        if spread {
            format!(
                "(random() * 1e9)::int, md5({n}::text) || md5(({n} + 1)::text), \
                 now() - random() * interval '3650 days', round((random() * 1e6)::numeric, 2)"
            )
        } else {
            format!("{n}, md5({n}::text) || md5(({n} + 1)::text), now(), {n} / 7.0")
        }
    };
    // Server-side loops committing every row: one-row transactions without
    // a round trip each, so generating is quick and identical every run.
    src.exec(&format!(
        "DO $$ BEGIN FOR i IN 1..{singles} LOOP \
           INSERT INTO bl (a, b, c, d) VALUES ({}); \
           COMMIT; END LOOP; END $$",
        values("i")
    ))
    .await?;
    let after_singles: String = src.value("SELECT pg_current_wal_lsn()::text").await?;
    src.exec(&format!(
        "INSERT INTO bl (a, b, c, d) SELECT {} FROM generate_series(1, {big}) g",
        values("g")
    ))
    .await?;
    let after_big: String = src.value("SELECT pg_current_wal_lsn()::text").await?;
    src.exec(&format!(
        "DO $$ BEGIN FOR i IN 1..{updates} LOOP \
           UPDATE bl SET a = a + 1, b = b || 'u', d = d * 2 WHERE id = i * 10; \
           COMMIT; END LOOP; END $$"
    ))
    .await?;
    let after_updates: String = src.value("SELECT pg_current_wal_lsn()::text").await?;
    let phases = vec![
        ("inserts", after_singles),
        ("big", after_big),
        ("updates", after_updates),
    ];
    src.exec(&format!(
        "DO $$ BEGIN FOR i IN 1..{deletes} LOOP \
           DELETE FROM bl WHERE id = i * 20 - 5; \
           COMMIT; END LOOP; END $$"
    ))
    .await?;
    let end: String = src.value("SELECT pg_current_wal_lsn()::text").await?;
    let wal: f64 = src
        .number(&format!("SELECT pg_wal_lsn_diff('{end}', '{start}')"))
        .await?;
    let rows: u64 = src.number("SELECT count(*) FROM bl").await?;
    eprintln!(
        "backlog written in {:.1} s: {:.0} MB of WAL, end LSN {end}, {rows} rows remain",
        t0.elapsed().as_secs_f64(),
        wal / 1e6
    );
    Ok(Written {
        singles,
        big,
        updates,
        deletes,
        end,
        wal,
        rows,
        phases,
    })
}

/// The backlog part.
pub async fn run(env: &Env, report: &mut Report) -> R<()> {
    let s = env.args.scale;
    env.src_admin.exec("CREATE DATABASE bsrc").await?;
    let src = Db::connect(&env.src_url("bsrc")).await?;
    src.exec(&format!("{BL_TABLE}; CREATE PUBLICATION p FOR TABLE bl;"))
        .await?;
    // Every contender's slot of every run exists before the backlog is
    // written, so each one replays all of it. Native subscriptions need the
    // pgoutput plugin; so does everyone else here.
    let runs = env.args.runs;
    for run in 1..=runs {
        for slot in ["recv", "native_a", "pgbridge_a", "native_b", "pgbridge_b"] {
            src.exec(&format!(
                "SELECT pg_create_logical_replication_slot('{slot}_{run}', 'pgoutput')"
            ))
            .await?;
        }
    }
    let w = write_backlog(&src, s, env.args.spread_keys).await?;
    let end = w.end.clone();
    let phases = w.phases.clone();
    report.headers.push(format!("backlog: {}", w.header()));
    report.headers.push(format!(
        "  pg_recvlogical: proto_version 1 to /dev/null; native: CREATE SUBSCRIPTION streaming = {}; \
         pgbridge: its defaults (highest proto, streaming)",
        if env.args.native_streaming { "on" } else { "off" }
    ));
    report.headers.push(
        "  shape (a): target table with its primary key only; \
         (b): plus 5 secondary indexes (a), (b), (c), (d), (a, c)"
            .into(),
    );
    report.headers.push(format!(
        "  inserted keys: {}",
        if env.args.spread_keys {
            "spread (a, c, d random; --spread-keys)"
        } else {
            "rising (a, c, d grow with the row number)"
        }
    ));

    // Contenders take turns, the order rotating from run to run.
    let jobs = [
        ("-", "pg_recvlogical"),
        ("a", "native"),
        ("a", "pgbridge"),
        ("b", "native"),
        ("b", "pgbridge"),
    ];
    for run in 1..=runs {
        for k in 0..jobs.len() {
            let (shape, who) = jobs[(k + run - 1) % jobs.len()];
            settle(env).await?;
            eprintln!("backlog run {run}/{runs}: {who} ({shape})");
            let r = match who {
                "pg_recvlogical" => {
                    recvlogical::drain(env, "bsrc", &format!("recv_{run}"), &end).await
                }
                _ => {
                    let db = format!("{who}_{shape}_{run}");
                    let indexes = if shape == "b" { BL_INDEXES } else { "" };
                    fresh_target(env, &db, &format!("{BL_TABLE}; {indexes}")).await?;
                    let r = if who == "native" {
                        native::backlog(env, &src, &db, &end, &phases).await
                    } else {
                        pgbridge::backlog(env, &src, &db, &end, &phases).await
                    };
                    env.tgt_admin
                        .exec(&format!("DROP DATABASE {db} WITH (FORCE)"))
                        .await?;
                    r
                }
            };
            report.add("backlog", shape, who, r);
        }
    }
    drop(src);
    env.src_admin
        .exec("DROP DATABASE bsrc WITH (FORCE)")
        .await?;
    Ok(())
}
