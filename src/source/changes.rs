//! From replication bytes to change events: decode (pgoutput), resolve
//! non-builtin column types (catalog), reassemble streamed transactions into
//! commit order (bounded memory), build typed events. Shared by `tail` and
//! the pipeline.

use std::path::PathBuf;

use bytes::Bytes;

use crate::model::assemble::{AssembleError, Assembler, Ordered, Output, Replay};
use crate::model::{BuildError, Event, EventBuilder};
use crate::pgoutput::{DecodeError, Decoder, Message};
use crate::source::catalog::TypeResolver;
use crate::source::{ConnInfo, SourceError};
use crate::Lsn;

#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("pgoutput: {0}")]
    Decode(#[from] DecodeError),
    #[error(transparent)]
    Assemble(#[from] AssembleError),
    #[error(transparent)]
    Build(#[from] BuildError),
}

/// Which transactions that carry a replication origin (pgoutput's Origin
/// message) a pipeline skips. A skipped transaction still reaches the
/// sinks, empty, so that its commit is acknowledged and the slot moves on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OriginFilter {
    /// Skip what a pgbridge sink wrote (origins named `pgbridge_*`): a
    /// reverse pipeline does not send the forward one's rows back.
    #[default]
    Pgbridge,
    /// Skip every transaction that has an origin (as PostgreSQL's
    /// `origin = none` subscriptions do).
    None,
    /// Skip nothing.
    Any,
}

impl OriginFilter {
    /// Whether a transaction from `origin` is skipped.
    pub fn skips(self, origin: Option<&str>) -> bool {
        match (self, origin) {
            (_, None) | (OriginFilter::Any, _) => false,
            (OriginFilter::None, Some(_)) => true,
            (OriginFilter::Pgbridge, Some(name)) => name.starts_with("pgbridge_"),
        }
    }
}

/// Push XLogData payloads in, pull events out (after each push, drain
/// [`ChangeStream::next_event`] until it returns `None`).
pub struct ChangeStream {
    decoder: Decoder,
    assembler: Assembler,
    builder: EventBuilder,
    resolver: TypeResolver,
    ready: Option<Ordered>,
    replay: Option<Box<Replay>>,
    origins: OriginFilter,
}

impl ChangeStream {
    pub fn new(source: ConnInfo, memory_limit: usize, spill_dir: PathBuf) -> Self {
        ChangeStream {
            decoder: Decoder::new(),
            assembler: Assembler::new(memory_limit, spill_dir),
            builder: EventBuilder::new(),
            resolver: TypeResolver::new(source),
            ready: None,
            replay: None,
            origins: OriginFilter::Any,
        }
    }

    /// Skips the contents of transactions `filter` skips (`Any` unless
    /// set: `tail` shows everything).
    pub fn with_origins(mut self, filter: OriginFilter) -> Self {
        self.origins = filter;
        self
    }

    /// Feeds one XLogData payload. Call [`ChangeStream::next_event`] until `None`
    /// before the next push.
    pub async fn push(&mut self, wal_start: Lsn, data: Bytes) -> Result<(), ChangeError> {
        // A row change of a streamed transaction is only buffered until
        // the transaction commits, and decoded then.
        if self.decoder.in_stream() {
            if let Some(sub) = streamed_change_xid(&data) {
                if self.assembler.push_streamed(wal_start, &data, sub)? {
                    return Ok(());
                }
            }
        }
        let message = self.decoder.decode(&data)?;
        match &message {
            Message::Relation(r) => {
                let missing = self.builder.types().missing(r);
                if !missing.is_empty() {
                    self.resolver
                        .resolve(self.builder.types_mut(), &missing)
                        .await?;
                }
            }
            Message::Type(t) => self.builder.types_mut().forget(t.oid),
            _ => {}
        }
        match self.assembler.push(wal_start, data, message)? {
            Output::None => {}
            Output::One(o) => self.ready = Some(o),
            Output::Replay(r) => self.replay = Some(r),
        }
        Ok(())
    }

    /// The next event from the last push, if any.
    pub fn next_event(&mut self) -> Result<Option<Event>, ChangeError> {
        loop {
            let ordered = if let Some(o) = self.ready.take() {
                o
            } else if let Some(r) = self.replay.as_mut() {
                match r.next() {
                    Some(o) => o?,
                    None => {
                        self.replay = None;
                        return Ok(None);
                    }
                }
            } else {
                return Ok(None);
            };
            let Some(ev) = self.builder.build(ordered)? else {
                continue;
            };
            let skipped = matches!(
                ev,
                Event::Change(_)
                    | Event::Truncate { .. }
                    | Event::Message {
                        transactional: true,
                        ..
                    }
            ) && self
                .origins
                .skips(self.builder.current().and_then(|t| t.origin.as_deref()));
            if !skipped {
                return Ok(Some(ev));
            }
        }
    }

    /// Some received work is not complete: inside a transaction.
    pub fn in_transaction(&self) -> bool {
        self.assembler.in_transaction() || self.replay.is_some() || self.builder.current().is_some()
    }

    pub fn builder(&self) -> &EventBuilder {
        &self.builder
    }
}

/// The transaction id at the start of an Insert, Update or Delete inside
/// a stream block (`I`/`U`/`D`, then the xid); `None` for other messages.
fn streamed_change_xid(data: &[u8]) -> Option<u32> {
    match data {
        [b'I' | b'U' | b'D', a, b, c, d, ..] => Some(u32::from_be_bytes([*a, *b, *c, *d])),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::OriginFilter;

    #[test]
    fn streamed_change_xid() {
        use super::streamed_change_xid as xid;
        assert_eq!(xid(b"I\0\0\x01\x02R..."), Some(0x102));
        assert_eq!(xid(b"D\0\0\0\x07"), Some(7));
        assert_eq!(xid(b"U\0\0\0"), None, "too short");
        assert_eq!(
            xid(b"R\0\0\0\x07"),
            None,
            "a Relation is decoded on arrival"
        );
        assert_eq!(xid(b""), None);
    }

    #[test]
    fn origin_filter() {
        let ours = Some("pgbridge_fwd.sink.w0");
        let other = Some("pg_16384");
        assert!(OriginFilter::Pgbridge.skips(ours));
        assert!(!OriginFilter::Pgbridge.skips(other));
        assert!(OriginFilter::None.skips(ours) && OriginFilter::None.skips(other));
        assert!(!OriginFilter::Any.skips(ours) && !OriginFilter::Any.skips(other));
        for f in [
            OriginFilter::Pgbridge,
            OriginFilter::None,
            OriginFilter::Any,
        ] {
            assert!(!f.skips(None));
        }
    }
}
