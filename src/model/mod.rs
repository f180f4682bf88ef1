//! The change model shared by all sinks: column types ([`TypeInfo`]), typed
//! column values ([`Value`], decoded from pgoutput tuple data by
//! [`decode_value`]) and their JSON rendering ([`JsonOptions`]); relation
//! schemas and change events ([`change`]); the reassembly of streamed
//! transactions into commit order ([`assemble`]).

mod array;
pub mod assemble;
pub mod change;
pub mod chunk;
pub mod copy_binary;
pub mod copy_text;
mod datetime;
pub mod json;
mod numeric;
pub mod types;
pub mod value;

#[cfg(test)]
mod tests;

pub use change::{
    BuildError, Change, ColumnSchema, Event, EventBuilder, Op, RelationSchema, TxnMeta,
    TypeRegistry,
};
pub use chunk::{BackfillChunk, ChunkRow, Replace};
pub use json::{JsonOptions, JsonRepr, NumericMode, RenderError, TemporalMode};
pub use types::{Builtin, TypeInfo, TypeKind};
pub use value::{
    decode_binary, decode_text, decode_value, Array, ArrayDim, Value, ValueError, WireFormat,
    DATE_NEG_INFINITY, DATE_POS_INFINITY, TIMESTAMP_NEG_INFINITY, TIMESTAMP_POS_INFINITY,
};
