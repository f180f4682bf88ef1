//! memory: one large transaction from one slot into a Postgres and a
//! Kafka sink together; pgbridge's peak RSS.

use std::time::Instant;

use crate::contenders::pgbridge;
use crate::cpu::{vm_hwm_mib, Watch};
use crate::db::{verify, Db};
use crate::env::{drop_slots, fresh_target, Env};
use crate::harness::tansu::Broker;
use crate::process::{terminate, wait_slot};
use crate::report::{Measured, Report};
use crate::scenarios::backlog::BL_TABLE;
use crate::scenarios::scaled;
use crate::R;

/// One large transaction from one slot into a Postgres and a Kafka sink
/// together; pgbridge's peak RSS.
pub async fn run(env: &Env, report: &mut Report) -> R<()> {
    let rows = scaled(3_000_000, env.args.scale);
    env.src_admin.exec("CREATE DATABASE msrc").await?;
    let src = Db::connect(&env.src_url("msrc")).await?;
    src.exec(&format!("{BL_TABLE}; CREATE PUBLICATION p FOR TABLE bl;"))
        .await?;
    src.exec("SELECT pg_create_logical_replication_slot('mem', 'pgoutput')")
        .await?;
    let start: String = src.value("SELECT pg_current_wal_lsn()::text").await?;
    eprintln!("memory: one transaction of {rows} rows");
    src.exec(&format!(
        "INSERT INTO bl (a, b, c, d) SELECT g, md5(g::text) || md5((g + 1)::text), now(), g / 7.0 \
         FROM generate_series(1, {rows}) g"
    ))
    .await?;
    let end: String = src.value("SELECT pg_current_wal_lsn()::text").await?;
    let wal: f64 = src
        .number(&format!("SELECT pg_wal_lsn_diff('{end}', '{start}')"))
        .await?;
    report.headers.push(format!(
        "memory: one transaction of {rows} rows ({:.0} MB WAL) from one slot to a Postgres sink \
         and a Kafka sink (tansu) together, pgbridge's defaults; peak RSS = VmHWM of the process",
        wal / 1e6
    ));
    fresh_target(env, "mtgt", BL_TABLE).await?;
    let broker = Broker::start(env, "memory")?;
    let result = async {
        let config = pgbridge::kafka_config(env, "msrc", "mem", &broker.addr, Some("mtgt"));
        let mut watch = Watch::begin(env, "msrc", Some("mtgt")).await?;
        let t0 = Instant::now();
        let (mut child, log) = pgbridge::spawn(env, "memory", &config)?;
        watch.tool(child.id());
        let waited = wait_slot(env, &src, &mut watch, "mem", &end, Some((&mut child, &log))).await;
        let secs = t0.elapsed().as_secs_f64();
        let cpu = watch.finish(env).await?;
        let peak = child.id().and_then(vm_hwm_mib);
        let stopped = terminate(&mut child, &log, "pgbridge").await;
        waited?;
        stopped?;
        let peak = peak.ok_or("no VmHWM of pgbridge")?;
        let tgt = Db::connect(&env.tgt_url("mtgt")).await?;
        verify(&src, &tgt, "bl").await?;
        let n = broker.count_checked("pgb.bl", rows).await?;
        if n < rows {
            return Err(format!("pgb.bl holds {n} records, expected {rows}"));
        }
        Ok((
            Measured {
                secs,
                cpu,
                note: format!("(peak RSS {peak:.1} MiB; {n} records)"),
            },
            peak,
        ))
    }
    .await;
    drop(src);
    drop_slots(env, "msrc").await?;
    env.src_admin
        .exec("DROP DATABASE msrc WITH (FORCE)")
        .await?;
    env.tgt_admin
        .exec("DROP DATABASE mtgt WITH (FORCE)")
        .await?;
    match result {
        Ok((m, peak)) => {
            report.memory = Some(Ok(peak));
            report.add("memory", "-", "pgbridge", Ok(m));
        }
        Err(e) => {
            report.memory = Some(Err(e.clone()));
            report.add("memory", "-", "pgbridge", Err(e));
        }
    }
    Ok(())
}
