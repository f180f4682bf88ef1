//! pg_recvlogical: to /dev/null (the source's drain limit), and with
//! wal2json piped into a Python Kafka producer (the naive Kafka peer).

use std::path::Path;
use std::time::Instant;

use tokio::process::Command;

use crate::cpu::Watch;
use crate::env::Env;
use crate::harness::tansu::Broker;
use crate::process::{spawn_logged, wait_exit};
use crate::report::Measured;
use crate::scenarios::backlog::Written;
use crate::R;

/// `pg_recvlogical` from `slot` to /dev/null until `end`: the source's
/// drain limit (decoding and sending only).
pub async fn drain(env: &Env, db: &str, slot: &str, end: &str) -> R<Measured> {
    let log = env.tmp.path().join(format!("{slot}.log"));
    let mut watch = Watch::begin(env, db, None).await?;
    let t0 = Instant::now();
    let mut child = spawn_logged(
        Command::new(env.tool("pg_recvlogical"))
            .args(["-h", "127.0.0.1", "-U", "postgres", "-d", db, "--no-loop"])
            .arg("-p")
            .arg(env.src.port().to_string())
            .args(["--slot", slot, "--start", "--endpos", end])
            .args(["-o", "proto_version=1", "-o", "publication_names=p"])
            .args(["--plugin", "pgoutput", "-f", "/dev/null"]),
        &log,
        "pg_recvlogical",
    )?;
    watch.tool(child.id());
    wait_exit(env, &mut watch, &mut child, &log, "pg_recvlogical", t0).await?;
    let secs = t0.elapsed().as_secs_f64();
    let cpu = watch.finish(env).await?;
    env.src_admin
        .exec(&format!("SELECT pg_drop_replication_slot('{slot}')"))
        .await?;
    Ok(Measured {
        secs,
        cpu,
        note: "(the limit: decode and send only)".into(),
    })
}

/// The Python with confluent-kafka for the wal2json peer.
fn bench_python() -> String {
    std::env::var("PGBRIDGE_BENCH_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// pg_recvlogical with wal2json piped into the Python producer.
pub async fn wal2json_kafka(env: &Env, slot: &str, w: &Written) -> R<Measured> {
    let broker = Broker::start(env, slot)?;
    let topic = "w2j.bl";
    broker.create_topic(topic).await?;
    let log = env.tmp.path().join(format!("{slot}.log"));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/wal2json_kafka.py");
    let cmd = format!(
        "set -o pipefail; '{recv}' -h 127.0.0.1 -p {port} -U postgres -d ksrc --no-loop \
         --slot {slot} --start --endpos {end} -o format-version=2 -o include-pk=1 -f - \
         | '{py}' '{script}' {addr} {topic}",
        recv = env.tool("pg_recvlogical").display(),
        port = env.src.port(),
        end = w.end,
        py = bench_python(),
        script = script.display(),
        addr = broker.addr,
    );
    let mut watch = Watch::begin(env, "ksrc", None).await?;
    let broker_cpu = broker.cpu(env.ticks);
    let t0 = Instant::now();
    let mut child = spawn_logged(
        Command::new("bash").arg("-c").arg(&cmd),
        &log,
        "pg_recvlogical | python",
    )?;
    watch.tool(child.id());
    wait_exit(
        env,
        &mut watch,
        &mut child,
        &log,
        "pg_recvlogical | python",
        t0,
    )
    .await?;
    let secs = t0.elapsed().as_secs_f64();
    let cpu = watch.finish(env).await?;
    let broker_cpu = broker.cpu(env.ticks) - broker_cpu;
    env.src_admin
        .exec(&format!("SELECT pg_drop_replication_slot('{slot}')"))
        .await?;
    let n = broker.count_checked(topic, w.changes()).await?;
    if n != w.changes() {
        return Err(format!(
            "{topic} holds {n} records, the backlog has {} changes",
            w.changes()
        ));
    }
    Ok(Measured {
        secs,
        cpu,
        note: format!("({n} records; broker CPU {broker_cpu:.1} s)"),
    })
}
