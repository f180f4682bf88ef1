//! pgbridge: PostgreSQL logical replication (pgoutput) to other systems.
//!
//! The data flow and the public contracts are described in DESIGN.md; each
//! module's doc comment says what it owns.

pub mod cluster;
pub mod lsn;
pub mod pgoutput;
pub mod source;

pub use lsn::Lsn;
