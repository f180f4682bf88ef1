//! All integration tests in one binary (built once), against real PostgreSQL
//! clusters started from the local binaries. See tests/harness.rs.

mod backfill;
mod backfill_compare;
mod batched;
mod cli;
mod copy_indexes;
mod custom_sink;
mod ddl;
mod failover;
mod ha;
mod harness;
mod kafka;
mod kafka_pipeline;
mod migration;
mod ops;
mod origins;
mod perms;
mod pgsink;
mod pgtypes;
mod pipeline;
mod resync;
mod schema_copy;
mod sequences;
mod shapes;
mod source;
mod switchover;
mod sync;
mod tail;
mod verify;

use libtest_mimic::{Arguments, Trial};

fn main() {
    let args = Arguments::from_args();
    let mut trials: Vec<Trial> = Vec::new();
    trials.extend(cli::trials());
    trials.extend(backfill::trials());
    trials.extend(batched::trials());
    trials.extend(backfill_compare::trials());
    trials.extend(source::trials());
    trials.extend(tail::trials());
    trials.extend(pgsink::trials());
    trials.extend(pipeline::trials());
    trials.extend(copy_indexes::trials());
    trials.extend(custom_sink::trials());
    trials.extend(pgtypes::trials());
    trials.extend(perms::trials());
    trials.extend(resync::trials());
    trials.extend(sequences::trials());
    trials.extend(verify::trials());
    trials.extend(shapes::trials());
    trials.extend(migration::trials());
    trials.extend(schema_copy::trials());
    trials.extend(kafka::trials());
    trials.extend(kafka_pipeline::trials());
    trials.extend(ops::trials());
    trials.extend(origins::trials());
    trials.extend(failover::trials());
    trials.extend(sync::trials());
    trials.extend(ha::trials());
    trials.extend(ddl::trials());
    trials.extend(switchover::trials());
    let conclusion = libtest_mimic::run(&args, trials);
    harness::shutdown();
    conclusion.exit();
}

/// Wraps a test function as a trial; a panic is a failure.
pub fn trial(name: &'static str, f: fn()) -> Trial {
    Trial::test(name, move || {
        std::panic::catch_unwind(f).map_err(|e| {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panicked".into());
            msg.into()
        })
    })
}
