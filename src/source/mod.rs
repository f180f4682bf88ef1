//! The source side: a replication connection to PostgreSQL, the replication
//! commands, and the CopyBoth loop that streams pgoutput messages and sends
//! status updates.

pub mod catalog;
pub mod changes;
pub mod conn;
pub mod conninfo;
pub mod ddl;
pub mod error;
pub mod health;
pub mod published;
pub mod replication;
pub(crate) mod tls;

pub use conn::{Connection, Mode, QueryResult};
pub use conninfo::{redact_url, ConnInfo, SslMode};
pub use error::{DbError, SourceError};
pub use replication::{
    max_proto_version, CreatedSlot, ReplEvent, ReplicationStream, SlotInfo, SnapshotAction,
    StartOptions, SystemInfo,
};
