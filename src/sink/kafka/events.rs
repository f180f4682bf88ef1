//! Source events to records: changes (a key change as a delete and a
//! create), truncates (one record per partition), logical messages and
//! transaction metadata, each encoded by the sink's [`Encoder`] and
//! produced in commit order.
//!
//! [`Encoder`]: super::encoder::Encoder

use std::sync::Arc;

use super::catalog::Table;
use super::encoder::{ChangeValue, Fixed};
use super::sink::KafkaSink;
use super::transactions::{Delivery, EOS_MAX_TXN_AGE};
use crate::encode::json::{
    self, EventContext, OldRow, SnapshotMarker, TransactionBlock, TxnStatus,
};
use crate::model::{BackfillChunk, BuildError, Change, Event, Op, RelationSchema, TxnMeta, Value};
use crate::pipeline::ack::CommitToken;
use crate::sink::{SinkError, SinkQueue};
use crate::Lsn;

const STREAMED: SnapshotMarker = SnapshotMarker::False;

/// The open source transaction.
pub(super) struct Txn {
    pub(super) meta: TxnMeta,
    /// The BEGIN record was produced.
    begun: bool,
    total: u64,
    per_table: Vec<(String, u64)>,
}

/// One change event to produce (and its tombstone for a delete).
pub(super) struct Emit<'a> {
    pub lsn: Lsn,
    pub op: &'static str,
    pub before: Option<OldRow<'a>>,
    pub after: Option<&'a [Value]>,
    /// The row whose key columns make the record key.
    pub key_values: &'a [Value],
    pub header: Option<(&'static str, &'a [u8])>,
    pub snapshot: SnapshotMarker,
}

impl KafkaSink {
    /// Counts one data event of `table` and returns its transaction block.
    fn count_event(&mut self, rel: &RelationSchema) -> Option<TransactionBlock> {
        // Only transaction metadata needs the counts.
        self.cfg.transaction_topic.as_ref()?;
        let table = rel.qualified_name();
        let txn = self.txn.as_mut()?;
        txn.total += 1;
        let n = match txn.per_table.iter_mut().find(|(t, _)| *t == table) {
            Some((_, n)) => {
                *n += 1;
                *n
            }
            None => {
                txn.per_table.push((table, 1));
                1
            }
        };
        Some(TransactionBlock {
            id: json::transaction_id(&txn.meta),
            total_order: txn.total,
            data_collection_order: n,
        })
    }

    /// Produces one record of a fixed kind to `topic`.
    async fn fixed_record(
        &mut self,
        topic: &str,
        rec: &Fixed<'_>,
        what: &(dyn Fn() -> String + Sync),
    ) -> Result<(), SinkError> {
        if let Some(tm) = self.topics.as_mut() {
            tm.ensure(topic).await?;
        }
        let Some(encoder) = self.encoder.as_mut() else {
            return Err(self.definite("run() before open()".into()));
        };
        encoder
            .fixed(
                &self.cfg.name,
                &self.envelope,
                topic,
                rec,
                &mut self.key,
                &mut self.value,
            )
            .await?;
        self.send(topic, None, true, true, what).await
    }

    /// Produces a BEGIN or END transaction metadata record.
    async fn transaction_record(&mut self, status: TxnStatus) -> Result<(), SinkError> {
        let Some(topic) = self.cfg.transaction_topic.clone() else {
            return Ok(());
        };
        let Some(txn) = self.txn.as_ref() else {
            return Ok(());
        };
        let meta = txn.meta.clone();
        let per_table = txn.per_table.clone();
        let rec = Fixed::Transaction {
            status,
            meta: &meta,
            counts: (status == TxnStatus::End).then_some((txn.total, &per_table[..])),
        };
        let xid = meta.xid;
        self.fixed_record(&topic, &rec, &|| {
            format!("the transaction record of xid {xid} to {topic}")
        })
        .await
    }

    /// Before the first data event of a transaction: its BEGIN record.
    async fn begin_if_needed(&mut self) -> Result<(), SinkError> {
        if self.cfg.transaction_topic.is_none() {
            return Ok(());
        }
        match self.txn.as_mut() {
            Some(t) if !t.begun => t.begun = true,
            _ => return Ok(()),
        }
        self.transaction_record(TxnStatus::Begin).await
    }

    /// Encodes the key of `values` into `self.key`; false when the table has
    /// no key columns (the record key is null).
    fn encode_key(&mut self, t: &Table, values: &[Value]) -> Result<bool, SinkError> {
        self.key.clear();
        if t.key_cols.is_empty() {
            return Ok(false);
        }
        t.codec
            .key(&mut self.key, &t.rel, values, &t.key_cols, &self.envelope)
            .map_err(|e| {
                self.definite(format!(
                    "encoding the key of a change to {}: {e}",
                    t.rel.qualified_name()
                ))
            })?;
        Ok(true)
    }

    /// Produces one change event (and its tombstone for a delete).
    pub(super) async fn emit(&mut self, t: &Table, e: Emit<'_>) -> Result<(), SinkError> {
        self.begin_if_needed().await?;
        let block = self.count_event(&t.rel);
        let has_key = self.encode_key(t, e.key_values)?;
        let lsn = e.lsn;
        let ctx = EventContext {
            meta: self.txn.as_ref().map(|x| &x.meta),
            snapshot: e.snapshot,
            transaction: block,
        };
        let value = ChangeValue {
            ctx: &ctx,
            rel: &t.rel,
            lsn,
            op: e.op,
            before: e.before,
            after: e.after,
        };
        t.codec
            .value(&mut self.value, &self.envelope, value)
            .map_err(|err| {
                self.definite(format!(
                    "encoding a change to {} at {lsn}: {err}",
                    t.rel.qualified_name()
                ))
            })?;
        let what = || {
            format!(
                "a change to {} at {lsn} to topic {}",
                t.rel.qualified_name(),
                t.topic
            )
        };
        self.send_with(&t.topic, None, has_key, true, e.header, &what)
            .await?;
        if e.op == "d" && self.cfg.tombstones && has_key {
            self.send(&t.topic, None, true, false, &what).await?;
        }
        Ok(())
    }

    async fn on_change(&mut self, c: &Change) -> Result<(), SinkError> {
        let t = self.table(&c.relation).await?;
        let decode_err = |e: BuildError| self.definite(e.to_string());
        let before = match &c.old {
            Some(r) => Some(c.decode(r, c.old_key_only).map_err(decode_err)?),
            None => None,
        };
        let after = match &c.new {
            Some(r) => Some(c.decode(r, false).map_err(decode_err)?),
            None => None,
        };
        let old = before.as_deref().map(|values| OldRow {
            values,
            key_only: c.old_key_only,
        });
        let plain = |op, after, key_values| Emit {
            lsn: c.lsn,
            op,
            before: old,
            after,
            key_values,
            header: None,
            snapshot: STREAMED,
        };
        match (c.op, &after) {
            (Op::Insert, Some(new)) => {
                let e = Emit {
                    before: None,
                    ..plain("c", Some(new), new)
                };
                self.emit(&t, e).await
            }
            (Op::Update, Some(new)) => self.on_update(&t, c, before.as_deref(), new).await,
            (Op::Delete, None) => {
                let b = before.as_deref().unwrap_or(&[]);
                self.emit(&t, plain("d", None, b)).await
            }
            _ => Err(self.definite(format!(
                "change to {} at {} has no {} row",
                c.relation.qualified_name(),
                c.lsn,
                if c.op == Op::Delete { "old" } else { "new" }
            ))),
        }
    }

    /// An update: one `u` record, or a delete of the old key and a create
    /// of the new one when the key changed.
    async fn on_update(
        &mut self,
        t: &Table,
        c: &Change,
        before: Option<&[Value]>,
        new: &[Value],
    ) -> Result<(), SinkError> {
        let old = before.map(|values| OldRow {
            values,
            key_only: c.old_key_only,
        });
        // With REPLICA IDENTITY FULL the old row holds the real value of a
        // column the new row leaves unchanged (TOAST): `after` is then
        // complete.
        let mut filled: Option<Vec<Value>> = None;
        if let (Some(b), false) = (before, c.old_key_only) {
            if new.iter().any(Value::is_unchanged) {
                let mut n = new.to_vec();
                for (d, s) in n.iter_mut().zip(b) {
                    if d.is_unchanged() && !s.is_unchanged() {
                        *d = s.clone();
                    }
                }
                filled = Some(n);
            }
        }
        let new: &[Value] = filled.as_deref().unwrap_or(new);
        // The new key, with the old value where the new one was not sent
        // (an unchanged TOASTed key column).
        let mut key_vals: Option<Vec<Value>> = None;
        if t.key_cols
            .iter()
            .any(|&i| new.get(i).is_some_and(Value::is_unchanged))
        {
            let mut k = new.to_vec();
            if let Some(b) = before {
                for &i in &t.key_cols {
                    if k.get(i).is_some_and(Value::is_unchanged) {
                        if let (Some(d), Some(s)) = (k.get_mut(i), b.get(i)) {
                            *d = s.clone();
                        }
                    }
                }
            }
            key_vals = Some(k);
        }
        let new_key: &[Value] = key_vals.as_deref().unwrap_or(new);
        let key_changed = match before {
            Some(b) => t.key_cols.iter().any(|&i| {
                let comparable = !c.old_key_only || c.relation.columns[i].is_key;
                comparable && b.get(i) != new_key.get(i)
            }),
            None => false,
        };
        let record = |op, before, after, key_values, header| Emit {
            lsn: c.lsn,
            op,
            before,
            after,
            key_values,
            header,
            snapshot: STREAMED,
        };
        if !key_changed {
            return self
                .emit(t, record("u", old, Some(new), new_key, None))
                .await;
        }
        // The old key's partition must see the delete. As Debezium, each
        // record names the other key in a header.
        let b = before.unwrap_or(&[]);
        self.encode_key(t, new_key)?;
        let new_key_bytes = self.key.clone();
        self.encode_key(t, b)?;
        let old_key_bytes = self.key.clone();
        let newkey = Some(("__debezium.newkey", &new_key_bytes[..]));
        self.emit(t, record("d", old, None, b, newkey)).await?;
        let oldkey = Some(("__debezium.oldkey", &old_key_bytes[..]));
        self.emit(t, record("c", None, Some(new), new_key, oldkey))
            .await
    }

    pub(super) async fn on_truncate(
        &mut self,
        lsn: Lsn,
        relations: &[Arc<RelationSchema>],
    ) -> Result<(), SinkError> {
        for rel in relations {
            let t = self.table(rel).await?;
            self.begin_if_needed().await?;
            let table = rel.qualified_name();
            let block = self.count_event(rel);
            let meta = self.txn.as_ref().map(|x| x.meta.clone());
            let ctx = EventContext {
                meta: meta.as_ref(),
                snapshot: SnapshotMarker::False,
                transaction: block,
            };
            let value = ChangeValue {
                ctx: &ctx,
                rel,
                lsn,
                op: "t",
                before: None,
                after: None,
            };
            t.codec
                .value(&mut self.value, &self.envelope, value)
                .map_err(|e| self.definite(format!("encoding the truncate of {table}: {e}")))?;
            // One record per partition, so that every partition orders the
            // truncate with the changes of its keys.
            // Asked every time: partitions may have been added meanwhile.
            let n = self.partition_count(&t.topic).await?;
            for p in 0..n {
                self.send(&t.topic, Some(p), false, true, &|| {
                    format!("the truncate of {table} at {lsn} to {}/{p}", t.topic)
                })
                .await?;
            }
        }
        Ok(())
    }

    /// A backfill chunk: a read event (`op` "r", as in the initial copy)
    /// per row, at the chunk's position.
    async fn on_chunk(&mut self, chunk: &BackfillChunk) -> Result<(), SinkError> {
        let t = self.table(&chunk.relation).await?;
        for row in &chunk.rows {
            let c = chunk.change(row);
            let Some(row) = &c.new else {
                continue;
            };
            let values = c
                .decode(row, false)
                .map_err(|e| self.definite(e.to_string()))?;
            let e = Emit {
                lsn: c.lsn,
                op: "r",
                before: None,
                after: Some(&values),
                key_values: &values,
                header: None,
                snapshot: SnapshotMarker::True,
            };
            self.emit(&t, e).await?;
        }
        Ok(())
    }

    async fn on_message(
        &mut self,
        lsn: Lsn,
        transactional: bool,
        prefix: &str,
        content: &[u8],
    ) -> Result<(), SinkError> {
        let Some(topic) = self.cfg.message_topic.clone() else {
            return Ok(());
        };
        let meta = if transactional {
            self.txn.as_ref().map(|t| t.meta.clone())
        } else {
            None
        };
        let rec = Fixed::Message {
            meta: meta.as_ref(),
            lsn,
            prefix,
            content,
            transactional,
        };
        self.fixed_record(&topic, &rec, &|| {
            format!("the logical message at {lsn} to {topic}")
        })
        .await
    }

    pub(super) async fn on_event(
        &mut self,
        ev: &Event,
        delivery: &mut Delivery,
    ) -> Result<(), SinkError> {
        match ev {
            Event::Begin(meta) => {
                // Exactly-once: between source transactions, an old Kafka
                // transaction is committed before the next one starts, so a
                // slowly streaming transaction does not hold back the
                // acknowledgement of those before it.
                if self.ktxn.open && !self.ktxn.dirty && self.ktxn.age() >= EOS_MAX_TXN_AGE {
                    if let Delivery::Transactions(order) = delivery {
                        self.commit_kafka_txn(order).await?;
                    }
                }
                self.txn = Some(Txn {
                    meta: meta.clone(),
                    begun: false,
                    total: 0,
                    per_table: Vec::new(),
                });
            }
            Event::Relation(_) => {} // tables are (re)built from the changes' relation
            Event::Change(c) => {
                self.ktxn.dirty = true;
                self.on_change(c).await?;
            }
            Event::Backfill(chunk) => {
                self.ktxn.dirty = true;
                self.on_chunk(chunk).await?;
            }
            Event::Truncate { lsn, relations, .. } => {
                self.ktxn.dirty = true;
                self.on_truncate(*lsn, relations).await?;
            }
            Event::Message {
                lsn,
                transactional,
                prefix,
                content,
            } => {
                self.ktxn.dirty = true;
                self.on_message(*lsn, *transactional, prefix, content)
                    .await?;
            }
            Event::Ddl { lsn, ddl } => {
                self.ktxn.dirty = true;
                self.on_ddl(*lsn, ddl).await?;
            }
            Event::Commit { .. } => {} // the pipeline sends SinkItem::Commit
        }
        Ok(())
    }

    /// A source commit: the transaction's END record, then its token to
    /// the delivery mode.
    pub(super) async fn on_commit(
        &mut self,
        token: CommitToken,
        queue: &SinkQueue,
        delivery: &mut Delivery,
    ) -> Result<(), SinkError> {
        if self.txn.as_ref().is_some_and(|t| t.begun) {
            self.transaction_record(TxnStatus::End).await?;
        }
        self.txn = None;
        self.deliver_commit(token, queue, delivery).await
    }
}
