//! pgbridge: PostgreSQL logical replication (pgoutput) to other systems.
//!
//! The README describes the data flow, the public contracts (CLI, config,
//! Kafka event format, delivery guarantee) and the module map; each
//! module's doc comment says what it owns.

pub mod backfill;
pub mod check;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod encode;
pub mod http;
pub mod logging;
pub mod lsn;
pub mod model;
pub mod pg;
pub mod pgoutput;
pub mod pipeline;
pub mod privileges;
pub mod resync;
pub mod sequences;
pub mod sink;
pub mod source;
pub mod sqlstate;
pub mod switchover;
pub mod tail;
pub mod verify;
pub mod wait;

pub use lsn::Lsn;
