//! Native logical replication: CREATE SUBSCRIPTION on the target.

use std::time::Instant;

use crate::cpu::Watch;
use crate::db::{verify, Db};
use crate::env::Env;
use crate::process::{wait_active, wait_slot_phases, POLL};
use crate::report::Measured;
use crate::scenarios::latency::{max_id, measure_latency, pgbench};
use crate::R;

/// Native replication into target database `name` from slot `name`.
pub async fn backlog(
    env: &Env,
    src: &Db,
    name: &str,
    end: &str,
    phases: &[(&str, String)],
) -> R<Measured> {
    let tgt = Db::connect(&env.tgt_url(name)).await?;
    let slot = name;
    let mut watch = Watch::begin(env, "bsrc", Some(name)).await?;
    let t0 = Instant::now();
    tgt.exec(&format!(
        "CREATE SUBSCRIPTION {name} CONNECTION '{}' PUBLICATION p WITH (copy_data = false, \
         create_slot = false, slot_name = '{slot}', enabled = true, streaming = {})",
        env.src_conninfo("bsrc"),
        env.args.native_streaming
    ))
    .await?;
    let waited = wait_slot_phases(env, src, &mut watch, slot, end, None, phases).await;
    let secs = t0.elapsed().as_secs_f64();
    let cpu = watch.finish(env).await?;
    // Drops the slot on the source too.
    tgt.exec(&format!("DROP SUBSCRIPTION {name}")).await?;
    let note = waited?;
    verify(src, &tgt, "bl").await?;
    Ok(Measured { secs, cpu, note })
}

/// Native tablesync into target database `name`: a subscription with
/// copy_data, timed until the table is synchronized.
pub async fn copy(env: &Env, src: &Db, name: &str) -> R<Measured> {
    let tgt = Db::connect(&env.tgt_url(name)).await?;
    let mut watch = Watch::begin(env, "csrc", Some(name)).await?;
    let t0 = Instant::now();
    tgt.exec(&format!(
        "CREATE SUBSCRIPTION {name} CONNECTION '{}' PUBLICATION pc WITH (copy_data = true)",
        env.src_conninfo("csrc")
    ))
    .await?;
    // pg_subscription_rel.srsubstate: i(nit), d(ata copy), f(inished copy),
    // s(ynchronized with the apply worker), r(eady). The copy is done and
    // committed at f; s follows once the apply worker has caught up (no
    // changes here), so s or r is "copied and replicating".
    let deadline = t0 + env.args.timeout;
    let mut state = String::new();
    let mut copied: Option<f64> = None;
    let waited = loop {
        state = tgt
            .rows("SELECT srsubstate FROM pg_subscription_rel WHERE srrelid = 'big'::regclass")
            .await?
            .first()
            .and_then(|r| r.first().cloned().flatten())
            .unwrap_or(state);
        if copied.is_none() && matches!(state.as_str(), "f" | "s" | "r") {
            copied = Some(t0.elapsed().as_secs_f64());
        }
        if state == "s" || state == "r" {
            break Ok(());
        }
        if Instant::now() > deadline {
            break Err(format!(
                "native tablesync timed out after {:?} in state {state:?}",
                env.args.timeout
            ));
        }
        watch.tick(env).await?;
        tokio::time::sleep(POLL).await;
    };
    let secs = t0.elapsed().as_secs_f64();
    let cpu = watch.finish(env).await?;
    tgt.exec(&format!("DROP SUBSCRIPTION {name}")).await?;
    waited?;
    verify(src, &tgt, "big").await?;
    Ok(Measured {
        secs,
        cpu,
        note: match copied {
            Some(f) if f + 0.1 < secs => {
                format!("(state {state}; copy committed (state f) at {f:.2} s)")
            }
            _ => format!("(state {state})"),
        },
    })
}

/// One slice of native replication: a new subscription (and slot), pgbench,
/// the rows' latencies and pgbench's tps.
pub async fn latency(env: &Env, src: &Db, run: u64, secs: u64, rate: u32) -> R<(Vec<f64>, f64)> {
    let tgt = Db::connect(&env.tgt_url("lat_native")).await?;
    let name = format!("lat_native_{run}");
    tgt.exec(&format!(
        "CREATE SUBSCRIPTION {name} CONNECTION '{}' PUBLICATION pn \
         WITH (copy_data = false, streaming = {})",
        env.src_conninfo("lsrc"),
        env.args.native_streaming
    ))
    .await?;
    let result: R<(Vec<f64>, f64)> = async {
        wait_active(src, &name, None).await?;
        let after = max_id(src, "lat_n").await?;
        let tps = pgbench(env, "lat_n", secs, rate).await?;
        Ok((measure_latency(src, &tgt, "lat_n", after).await?, tps))
    }
    .await;
    tgt.exec(&format!("DROP SUBSCRIPTION {name}")).await?;
    result
}
