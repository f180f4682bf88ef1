//! The change model shared by every sink: relation schemas (kept current by
//! Relation messages, also after ALTER TABLE), typed rows, and transaction
//! boundaries. [`EventBuilder`] turns messages in commit order (from
//! [`Assembler`](super::assemble::Assembler)) into [`Event`]s.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use super::assemble::Ordered;
use super::types::TypeInfo;
use super::value::{decode_value, Value, ValueError};
use crate::pgoutput::{self, Message, PgTimestamp, RelId, ReplicaIdentity, TupleValue, Xid};
use crate::Lsn;

/// One column of a published table.
#[derive(Clone, Debug, PartialEq)]
pub struct ColumnSchema {
    pub name: String,
    pub type_info: TypeInfo,
    pub type_modifier: i32,
    /// Part of the replica identity (the key that identifies a row).
    pub is_key: bool,
}

/// A published table as the last Relation message described it.
#[derive(Clone, Debug, PartialEq)]
pub struct RelationSchema {
    pub rel_id: RelId,
    /// The server sends an empty namespace for `pg_catalog`; it is filled in here.
    pub schema: String,
    pub name: String,
    pub replica_identity: ReplicaIdentity,
    pub columns: Vec<ColumnSchema>,
}

impl RelationSchema {
    /// `schema.table`, unquoted, for messages and routing.
    pub fn qualified_name(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }

    /// Indexes of the replica identity columns.
    pub fn key_indexes(&self) -> impl Iterator<Item = usize> + '_ {
        self.columns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.is_key)
            .map(|(i, _)| i)
    }
}

/// Types known so far, by OID. Builtins need no entry.
#[derive(Default, Debug)]
pub struct TypeRegistry {
    types: HashMap<u32, TypeInfo>,
}

impl TypeRegistry {
    pub fn get(&self, oid: u32) -> Option<TypeInfo> {
        TypeInfo::builtin(oid).or_else(|| self.types.get(&oid).cloned())
    }

    pub fn insert(&mut self, info: TypeInfo) {
        self.types.insert(info.oid(), info);
    }

    /// Forgets a type (a Type message says it may have changed).
    pub fn forget(&mut self, oid: u32) {
        self.types.remove(&oid);
    }

    /// The OIDs of `rel` that are neither builtin nor known yet.
    pub fn missing(&self, rel: &pgoutput::Relation) -> Vec<u32> {
        let mut v: Vec<u32> = rel
            .columns
            .iter()
            .map(|c| c.type_oid)
            .filter(|oid| self.get(*oid).is_none())
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }
}

/// Operation of a row change, with Debezium's letters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Insert,
    Update,
    Delete,
}

impl Op {
    pub fn letter(self) -> &'static str {
        match self {
            Op::Insert => "c",
            Op::Update => "u",
            Op::Delete => "d",
        }
    }
}

/// A row as the server sent it: one [`TupleValue`] per column of the
/// relation, in column order, still in wire form (text or binary, slices of
/// the received buffer, no copy). A Postgres sink can hand the text straight
/// to the target (exact for every type, extension types included); sinks
/// that need typed values call [`Row::values`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row(pub Vec<TupleValue>);

/// Bytes of row data `values` hold, about (what queue budgets count).
pub fn values_bytes(values: &[TupleValue]) -> usize {
    values
        .iter()
        .map(|v| match v {
            TupleValue::Text(b) | TupleValue::Binary(b) => b.len() + 8,
            _ => 8,
        })
        .sum()
}

impl Row {
    /// Indexes of columns whose value is the unchanged-TOAST marker.
    pub fn unchanged_toast(&self) -> impl Iterator<Item = usize> + '_ {
        self.0
            .iter()
            .enumerate()
            .filter(|(_, v)| matches!(v, TupleValue::UnchangedToast))
            .map(|(i, _)| i)
    }
}

/// One row change, in the relation's column order.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    pub op: Op,
    /// The WAL position of the change record.
    pub lsn: Lsn,
    pub relation: Arc<RelationSchema>,
    /// Update: present with REPLICA IDENTITY FULL or a key change. Delete: always.
    pub old: Option<Row>,
    /// True when `old` holds only the replica identity columns (the others
    /// are null and mean "not sent", not NULL).
    pub old_key_only: bool,
    /// Insert and update: the new row.
    pub new: Option<Row>,
}

impl Change {
    /// Typed values of `row` (this change's `old` or `new`) in column order;
    /// unchanged TOAST columns are [`Value::Unchanged`], never a
    /// placeholder. With `key_only`, non-key columns are [`Value::Null`]
    /// (they were not sent). Errors name table, column and type.
    pub fn decode(&self, row: &Row, key_only: bool) -> Result<Vec<Value>, BuildError> {
        let rel = &*self.relation;
        row.0
            .iter()
            .zip(&rel.columns)
            .map(|(v, col)| {
                if key_only && !col.is_key {
                    return Ok(Value::Null);
                }
                decode_value(&col.type_info, v).map_err(|source| BuildError::Value {
                    table: rel.qualified_name(),
                    column: col.name.clone(),
                    type_name: col.type_info.name().to_string(),
                    lsn: self.lsn,
                    source: Box::new(source),
                })
            })
            .collect()
    }
}

/// Transaction boundaries as the source committed them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnMeta {
    pub xid: Xid,
    pub commit_lsn: Lsn,
    pub commit_ts: PgTimestamp,
    /// Replication origin the transaction came from, if any.
    pub origin: Option<String>,
}

/// What consumers see, in commit order. Row changes, truncates and
/// transactional messages come between a `Begin` and its `Commit`.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    Begin(TxnMeta),
    /// A table's schema is new or changed; later changes use it.
    Relation(Arc<RelationSchema>),
    Change(Change),
    Truncate {
        lsn: Lsn,
        relations: Vec<Arc<RelationSchema>>,
        cascade: bool,
        restart_identity: bool,
    },
    /// `pg_logical_emit_message`; non-transactional ones come outside any
    /// transaction, as soon as they are written.
    Message {
        lsn: Lsn,
        transactional: bool,
        prefix: String,
        content: Bytes,
    },
    /// A schema change of a table, captured on the source
    /// (`source.capture_ddl`): the pipeline's fan-out makes it from the
    /// capture's transactional logical message, at the message's place in
    /// the transaction, and sends it only to the sinks that select the
    /// table. Never built by [`EventBuilder`].
    Ddl {
        lsn: Lsn,
        ddl: Arc<crate::source::ddl::DdlMessage>,
    },
    /// Rows of a backfill chunk (see [`BackfillChunk`]), inside the
    /// transaction of its high watermark. Sinks that do not take chunks
    /// whole ([`crate::sink::Sink::takes_backfill`]) get its rows as
    /// inserts instead.
    Backfill(Arc<super::chunk::BackfillChunk>),
    /// `end_lsn` is the position to confirm once this transaction is durable.
    Commit {
        meta: TxnMeta,
        end_lsn: Lsn,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("change at {lsn} refers to relation OID {rel_id}, but no Relation message described it (protocol violation)")]
    UnknownRelation { lsn: Lsn, rel_id: RelId },
    #[error(
        "change to {table} at {lsn} has {got} columns, the Relation message announced {expected}"
    )]
    ColumnCount {
        table: String,
        lsn: Lsn,
        got: usize,
        expected: usize,
    },
    #[error("cannot decode column {column} ({type_name}) of {table} at {lsn}: {source}")]
    Value {
        table: String,
        column: String,
        type_name: String,
        lsn: Lsn,
        source: Box<ValueError>,
    },
    #[error("{what} at {lsn} outside a transaction (protocol violation)")]
    NoTransaction { what: &'static str, lsn: Lsn },
}

/// Keeps the relation cache and builds events. See the module documentation.
#[derive(Default)]
pub struct EventBuilder {
    relations: HashMap<RelId, Arc<RelationSchema>>,
    types: TypeRegistry,
    current: Option<TxnMeta>,
}

impl EventBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// The type registry, to fill before Relation messages are built (see
    /// [`TypeRegistry::missing`]).
    pub fn types_mut(&mut self) -> &mut TypeRegistry {
        &mut self.types
    }

    pub fn types(&self) -> &TypeRegistry {
        &self.types
    }

    pub fn relation(&self, rel_id: RelId) -> Option<&Arc<RelationSchema>> {
        self.relations.get(&rel_id)
    }

    /// The open transaction, between Begin and Commit.
    pub fn current(&self) -> Option<&TxnMeta> {
        self.current.as_ref()
    }

    fn rel(&self, lsn: Lsn, rel_id: RelId) -> Result<Arc<RelationSchema>, BuildError> {
        self.relations
            .get(&rel_id)
            .cloned()
            .ok_or(BuildError::UnknownRelation { lsn, rel_id })
    }

    /// The decoded tuple as a row, moved (not copied: a copy cost an
    /// allocation and a reference count per value on every change).
    fn row(rel: &RelationSchema, lsn: Lsn, tuple: Vec<TupleValue>) -> Result<Row, BuildError> {
        if tuple.len() != rel.columns.len() {
            return Err(BuildError::ColumnCount {
                table: rel.qualified_name(),
                lsn,
                got: tuple.len(),
                expected: rel.columns.len(),
            });
        }
        Ok(Row(tuple))
    }

    fn in_txn(&self, what: &'static str, lsn: Lsn) -> Result<(), BuildError> {
        if self.current.is_none() {
            return Err(BuildError::NoTransaction { what, lsn });
        }
        Ok(())
    }

    /// Builds the event for one message in commit order, if it makes one.
    pub fn build(&mut self, ordered: Ordered) -> Result<Option<Event>, BuildError> {
        let lsn = ordered.lsn;
        Ok(Some(match ordered.message {
            Message::Begin(b) => {
                let meta = TxnMeta {
                    xid: b.xid,
                    commit_lsn: b.final_lsn,
                    commit_ts: b.commit_ts,
                    origin: None,
                };
                self.current = Some(meta.clone());
                Event::Begin(meta)
            }
            Message::Commit(c) => {
                let mut meta = self.current.take().ok_or(BuildError::NoTransaction {
                    what: "Commit",
                    lsn,
                })?;
                meta.commit_lsn = c.commit_lsn;
                meta.commit_ts = c.commit_ts;
                Event::Commit {
                    meta,
                    end_lsn: c.end_lsn,
                }
            }
            Message::Origin(o) => {
                if let Some(cur) = self.current.as_mut() {
                    cur.origin = Some(o.name);
                }
                return Ok(None);
            }
            Message::Type(t) => {
                // The registry was refreshed when the message arrived; a
                // later Relation will use the new description.
                let _ = t;
                return Ok(None);
            }
            Message::Relation(r) => match self.learn_relation(r) {
                Some(event) => event,
                None => return Ok(None), // re-sent unchanged
            },
            Message::Insert(i) => {
                self.in_txn("Insert", lsn)?;
                let relation = self.rel(lsn, i.rel_id)?;
                let new = Self::row(&relation, lsn, i.new)?;
                Event::Change(Change {
                    op: Op::Insert,
                    lsn,
                    relation,
                    old: None,
                    old_key_only: false,
                    new: Some(new),
                })
            }
            Message::Update(u) => self.update(lsn, u)?,
            Message::Delete(d) => self.delete(lsn, d)?,
            Message::Truncate(t) => {
                self.in_txn("Truncate", lsn)?;
                let relations = t
                    .rel_ids
                    .iter()
                    .map(|id| self.rel(lsn, *id))
                    .collect::<Result<Vec<_>, _>>()?;
                Event::Truncate {
                    lsn,
                    relations,
                    cascade: t.cascade(),
                    restart_identity: t.restart_identity(),
                }
            }
            Message::Message(m) => {
                let transactional = m.transactional();
                if transactional {
                    self.in_txn("transactional logical message", lsn)?;
                }
                Event::Message {
                    lsn: m.lsn,
                    transactional,
                    prefix: m.prefix,
                    content: m.content,
                }
            }
            // Stream and two-phase framing is consumed by the assembler.
            _ => return Ok(None),
        }))
    }

    /// Takes a Relation message into the schema map; the event, unless the
    /// server re-sent the relation unchanged.
    fn learn_relation(&mut self, r: pgoutput::Relation) -> Option<Event> {
        let schema = RelationSchema {
            rel_id: r.rel_id,
            schema: if r.namespace.is_empty() {
                "pg_catalog".into()
            } else {
                r.namespace
            },
            name: r.name,
            replica_identity: r.replica_identity,
            columns: r
                .columns
                .into_iter()
                .map(|c| ColumnSchema {
                    is_key: c.is_key(),
                    type_info: self
                        .types
                        .get(c.type_oid)
                        .unwrap_or_else(|| TypeInfo::other(c.type_oid, "unknown")),
                    name: c.name,
                    type_modifier: c.type_modifier,
                })
                .collect(),
        };
        let schema = Arc::new(schema);
        if self.relations.get(&r.rel_id) == Some(&schema) {
            return None; // re-sent unchanged
        }
        self.relations.insert(r.rel_id, schema.clone());
        Some(Event::Relation(schema))
    }

    fn update(&self, lsn: Lsn, u: pgoutput::Update) -> Result<Event, BuildError> {
        self.in_txn("Update", lsn)?;
        let relation = self.rel(lsn, u.rel_id)?;
        let (old, old_key_only) = match u.old {
            None => (None, false),
            Some(pgoutput::OldTuple::Key(t)) => (Some(Self::row(&relation, lsn, t)?), true),
            Some(pgoutput::OldTuple::Full(t)) => (Some(Self::row(&relation, lsn, t)?), false),
        };
        let new = Self::row(&relation, lsn, u.new)?;
        Ok(Event::Change(Change {
            op: Op::Update,
            lsn,
            relation,
            old,
            old_key_only,
            new: Some(new),
        }))
    }

    fn delete(&self, lsn: Lsn, d: pgoutput::Delete) -> Result<Event, BuildError> {
        self.in_txn("Delete", lsn)?;
        let relation = self.rel(lsn, d.rel_id)?;
        let (old, key_only) = match d.old {
            pgoutput::OldTuple::Key(t) => (Self::row(&relation, lsn, t)?, true),
            pgoutput::OldTuple::Full(t) => (Self::row(&relation, lsn, t)?, false),
        };
        Ok(Event::Change(Change {
            op: Op::Delete,
            lsn,
            relation,
            old: Some(old),
            old_key_only: key_only,
            new: None,
        }))
    }
}
