//! Turns the pgoutput message stream into transactions in commit order.
//!
//! Without streaming, pgoutput already sends each transaction whole, at its
//! commit, contiguously: those messages pass straight through, so a
//! 10-million-row transaction flows through without being held anywhere.
//!
//! With streaming (protocol ≥ 2), the server sends chunks of large
//! in-progress transactions, interleaved with other transactions, and later a
//! Stream Commit or Stream Abort. Consumers must see committed work only, in
//! commit order, so streamed chunks are buffered per transaction: in memory up
//! to `memory_limit` bytes in total, then appended to a spill file per
//! transaction. On Stream Commit the buffered messages are replayed, framed by
//! a synthetic Begin and Commit, exactly as if the transaction had been sent
//! unstreamed. Memory stays bounded whatever the transaction size.
//!
//! A Stream Abort of a subtransaction discards that subtransaction's changes
//! and everything buffered after its first change (its nested
//! subtransactions), the way PostgreSQL's own subscriber truncates its spool
//! file. Spill files are temporary files: nothing is durable here. After a
//! restart the server streams the transaction again from its start.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;

use bytes::{Bytes, BytesMut};

use crate::pgoutput::{self, Begin, Commit, DecodeError, Message, Xid};
use crate::Lsn;

#[derive(Debug, thiserror::Error)]
pub enum AssembleError {
    #[error("cannot decode pgoutput message at {lsn}: {source}")]
    Decode { lsn: Lsn, source: DecodeError },
    #[error("spill file for streamed transaction {xid} in {dir}: {source}")]
    Spill {
        xid: Xid,
        dir: String,
        source: std::io::Error,
    },
    #[error("pgoutput stream out of order at {lsn}: {why}")]
    Order { lsn: Lsn, why: String },
    #[error("two-phase message {kind} at {lsn}: pgbridge does not enable two_phase on its slots, so the server should not send it; recreate the slot without two_phase")]
    TwoPhase { kind: &'static str, lsn: Lsn },
}

/// A message in commit order, with the WAL position of the record it came
/// from (`XLogData.wal_start`: the change's own LSN).
#[derive(Debug, Clone, PartialEq)]
pub struct Ordered {
    pub lsn: Lsn,
    pub message: Message,
}

/// What [`Assembler::push`] produced for one incoming message.
pub enum Output {
    /// Buffered (or nothing to pass on).
    None,
    /// Pass this message on now.
    One(Ordered),
    /// A streamed transaction committed: replay it completely before
    /// pushing anything else.
    Replay(Box<Replay>),
}

/// One entry of a streamed transaction's buffer.
struct Entry {
    lsn: Lsn,
    data: Bytes,
}

/// Where the first change of a subtransaction sits in its buffer.
#[derive(Clone, Copy)]
struct Mark {
    /// Entries before it, in file and memory together.
    index: u64,
    /// Byte length of the spill file at that point (when it was spilled).
    file_len: u64,
}

struct StreamBuf {
    memory: Vec<Entry>,
    memory_bytes: usize,
    spill: Option<(File, PathBuf)>,
    spilled_entries: u64,
    spilled_bytes: u64,
    subxacts: HashMap<Xid, Mark>,
}

impl StreamBuf {
    fn new() -> Self {
        StreamBuf {
            memory: Vec::new(),
            memory_bytes: 0,
            spill: None,
            spilled_entries: 0,
            spilled_bytes: 0,
            subxacts: HashMap::new(),
        }
    }

    fn total_entries(&self) -> u64 {
        self.spilled_entries + self.memory.len() as u64
    }
}

/// Reassembles streamed transactions. See the module documentation.
pub struct Assembler {
    memory_limit: usize,
    memory_used: usize,
    spill_dir: PathBuf,
    streams: HashMap<Xid, StreamBuf>,
    /// The transaction of the current stream block (Stream Start .. Stop).
    current: Option<Xid>,
    /// Inside a non-streamed Begin .. Commit.
    in_txn: bool,
}

/// Per-entry overhead counted against the memory limit besides the bytes.
const ENTRY_OVERHEAD: usize = 48;

/// Bytes read from a spill file at a time when a transaction is replayed.
const READ_BLOCK: usize = 256 * 1024;

impl Assembler {
    /// `memory_limit`: bytes of streamed changes held in memory over all open
    /// streamed transactions before spilling to files in `spill_dir`.
    pub fn new(memory_limit: usize, spill_dir: PathBuf) -> Self {
        Assembler {
            memory_limit,
            memory_used: 0,
            spill_dir,
            streams: HashMap::new(),
            current: None,
            in_txn: false,
        }
    }

    /// True between a Begin and its Commit, or when a streamed transaction is
    /// open: some received work is not complete yet.
    pub fn in_transaction(&self) -> bool {
        self.in_txn
    }

    /// Streamed transactions not yet committed or aborted.
    pub fn open_streams(&self) -> usize {
        self.streams.len()
    }

    /// Bytes of streamed changes held in memory right now.
    pub fn memory_used(&self) -> usize {
        self.memory_used
    }

    /// Feeds one decoded message with its raw bytes and WAL position.
    pub fn push(
        &mut self,
        lsn: Lsn,
        raw: Bytes,
        message: Message,
    ) -> Result<Output, AssembleError> {
        let order = |why: String| AssembleError::Order { lsn, why };
        match message {
            Message::StreamStart(s) => {
                if self.current.is_some() {
                    return Err(order("Stream Start inside a stream block".into()));
                }
                if self.in_txn {
                    return Err(order("Stream Start inside a transaction".into()));
                }
                if s.first_segment || !self.streams.contains_key(&s.xid) {
                    // A first segment we already know means the server
                    // restarted the transaction: start over.
                    if let Some(old) = self.streams.insert(s.xid, StreamBuf::new()) {
                        self.memory_used -= old.memory_bytes;
                    }
                }
                self.current = Some(s.xid);
                Ok(Output::None)
            }
            Message::StreamStop => {
                if self.current.take().is_none() {
                    return Err(order("Stream Stop outside a stream block".into()));
                }
                Ok(Output::None)
            }
            Message::StreamAbort(a) => {
                if self.current.is_some() {
                    return Err(order("Stream Abort inside a stream block".into()));
                }
                if a.subxid == a.xid {
                    if let Some(buf) = self.streams.remove(&a.xid) {
                        self.memory_used -= buf.memory_bytes;
                    }
                } else if let Some(buf) = self.streams.get_mut(&a.xid) {
                    self.memory_used -= truncate_subxact(buf, a.subxid, a.xid, &self.spill_dir)?;
                }
                Ok(Output::None)
            }
            Message::StreamCommit(c) => {
                if self.current.is_some() {
                    return Err(order("Stream Commit inside a stream block".into()));
                }
                let buf = self.streams.remove(&c.xid).unwrap_or_else(StreamBuf::new);
                self.memory_used -= buf.memory_bytes;
                Ok(Output::Replay(Box::new(Replay::new(
                    buf,
                    c.xid,
                    Begin {
                        final_lsn: c.commit_lsn,
                        commit_ts: c.commit_ts,
                        xid: c.xid,
                    },
                    Commit {
                        flags: c.flags,
                        commit_lsn: c.commit_lsn,
                        end_lsn: c.end_lsn,
                        commit_ts: c.commit_ts,
                    },
                    lsn,
                    &self.spill_dir,
                )?)))
            }
            Message::BeginPrepare(_) => Err(AssembleError::TwoPhase {
                kind: "Begin Prepare",
                lsn,
            }),
            Message::Prepare(_) => Err(AssembleError::TwoPhase {
                kind: "Prepare",
                lsn,
            }),
            Message::CommitPrepared(_) => Err(AssembleError::TwoPhase {
                kind: "Commit Prepared",
                lsn,
            }),
            Message::RollbackPrepared(_) => Err(AssembleError::TwoPhase {
                kind: "Rollback Prepared",
                lsn,
            }),
            Message::StreamPrepare(_) => Err(AssembleError::TwoPhase {
                kind: "Stream Prepare",
                lsn,
            }),
            message => {
                if let Some(xid) = self.current {
                    self.buffer(xid, lsn, raw, message_xid(&message))?;
                    return Ok(Output::None);
                }
                match &message {
                    Message::Begin(_) => {
                        if self.in_txn {
                            return Err(order("Begin inside a transaction".into()));
                        }
                        self.in_txn = true;
                    }
                    Message::Commit(_) => {
                        if !self.in_txn {
                            return Err(order("Commit without Begin".into()));
                        }
                        self.in_txn = false;
                    }
                    _ => {}
                }
                Ok(Output::One(Ordered { lsn, message }))
            }
        }
    }

    /// A data message (Insert, Update, Delete) of the open stream block,
    /// as received, with the transaction id it carries (`sub`), buffered
    /// without being decoded: it is decoded when its transaction is
    /// replayed (decoding it on arrival as well decoded every change of a
    /// streamed transaction twice). False when no stream block is open:
    /// then it is not taken, and goes through [`Assembler::push`].
    pub fn push_streamed(
        &mut self,
        lsn: Lsn,
        raw: &Bytes,
        sub: Xid,
    ) -> Result<bool, AssembleError> {
        let Some(xid) = self.current else {
            return Ok(false);
        };
        self.buffer(xid, lsn, raw.clone(), Some(sub))?;
        Ok(true)
    }

    fn buffer(
        &mut self,
        xid: Xid,
        lsn: Lsn,
        raw: Bytes,
        sub: Option<Xid>,
    ) -> Result<(), AssembleError> {
        let sub = sub.unwrap_or(xid);
        let buf = self.streams.entry(xid).or_insert_with(StreamBuf::new);
        if sub != xid && !buf.subxacts.contains_key(&sub) {
            let mark = Mark {
                index: buf.total_entries(),
                file_len: buf.spilled_bytes,
            };
            buf.subxacts.insert(sub, mark);
        }
        let size = raw.len() + ENTRY_OVERHEAD;
        buf.memory.push(Entry { lsn, data: raw });
        buf.memory_bytes += size;
        self.memory_used += size;
        if self.memory_used > self.memory_limit {
            // Spill the transaction being written: it is the one growing.
            let freed = spill(buf, xid, &self.spill_dir)?;
            self.memory_used -= freed;
        }
        Ok(())
    }
}

/// The xid carried by a data message inside a stream block.
fn message_xid(m: &Message) -> Option<Xid> {
    match m {
        Message::Relation(r) => r.xid,
        Message::Type(t) => t.xid,
        Message::Insert(i) => i.xid,
        Message::Update(u) => u.xid,
        Message::Delete(d) => d.xid,
        Message::Truncate(t) => t.xid,
        Message::Message(m) => m.xid,
        _ => None,
    }
}

fn spill_err(xid: Xid, dir: &std::path::Path) -> impl Fn(std::io::Error) -> AssembleError + '_ {
    move |source| AssembleError::Spill {
        xid,
        dir: dir.display().to_string(),
        source,
    }
}

/// Appends the in-memory entries to the spill file; returns bytes freed.
fn spill(buf: &mut StreamBuf, xid: Xid, dir: &std::path::Path) -> Result<usize, AssembleError> {
    let err = spill_err(xid, dir);
    if buf.spill.is_none() {
        std::fs::create_dir_all(dir).map_err(&err)?;
        let file = tempfile::Builder::new()
            .prefix(&format!("pgbridge-xid{xid}-"))
            .tempfile_in(dir)
            .map_err(&err)?;
        // The directory entry is not needed: keep only the open handle, so
        // the file vanishes with the process however it ends.
        let (file, path) = file.keep().map_err(|e| err(e.error))?;
        let _ = std::fs::remove_file(&path);
        buf.spill = Some((file, path));
    }
    let Some((file, _)) = buf.spill.as_mut() else {
        return Ok(0);
    };
    file.seek(SeekFrom::Start(buf.spilled_bytes))
        .map_err(&err)?;
    let mut w = BufWriter::with_capacity(256 * 1024, &mut *file);
    for e in buf.memory.drain(..) {
        w.write_all(&e.lsn.0.to_be_bytes()).map_err(&err)?;
        w.write_all(&(e.data.len() as u32).to_be_bytes())
            .map_err(&err)?;
        w.write_all(&e.data).map_err(&err)?;
        buf.spilled_bytes += 12 + e.data.len() as u64;
        buf.spilled_entries += 1;
    }
    w.flush().map_err(&err)?;
    let freed = buf.memory_bytes;
    buf.memory_bytes = 0;
    Ok(freed)
}

/// Drops subtransaction `sub` and everything buffered after its first
/// change; returns memory bytes freed.
fn truncate_subxact(
    buf: &mut StreamBuf,
    sub: Xid,
    xid: Xid,
    dir: &std::path::Path,
) -> Result<usize, AssembleError> {
    let Some(mark) = buf.subxacts.remove(&sub) else {
        return Ok(0); // it had no changes
    };
    let mut freed = 0;
    if mark.index >= buf.spilled_entries {
        let keep = (mark.index - buf.spilled_entries) as usize;
        for e in buf.memory.drain(keep.min(buf.memory.len())..) {
            freed += e.data.len() + ENTRY_OVERHEAD;
        }
    } else {
        for e in buf.memory.drain(..) {
            freed += e.data.len() + ENTRY_OVERHEAD;
        }
        if let Some((file, _)) = buf.spill.as_mut() {
            file.set_len(mark.file_len).map_err(spill_err(xid, dir))?;
        }
        buf.spilled_bytes = mark.file_len;
        buf.spilled_entries = mark.index;
    }
    buf.memory_bytes -= freed;
    // Marks of later subtransactions point into what was just removed.
    buf.subxacts.retain(|_, m| m.index < mark.index);
    Ok(freed)
}

/// The replay of one committed streamed transaction: a synthetic Begin, the
/// buffered messages in order (spill file first, then memory), a synthetic
/// Commit. An iterator; reads the spill file sequentially.
pub struct Replay {
    begin: Option<Ordered>,
    file: Option<File>,
    /// Read from the file, not yet replayed: each entry is split off it, so
    /// that entries share one allocation per [`READ_BLOCK`] (an allocation
    /// per entry, and another when its values were sliced, were a tenth
    /// of the replay's cost).
    block: BytesMut,
    file_left: u64,
    memory: std::vec::IntoIter<Entry>,
    commit: Option<Ordered>,
    xid: Xid,
    dir: PathBuf,
}

impl Replay {
    fn new(
        buf: StreamBuf,
        xid: Xid,
        begin: Begin,
        commit: Commit,
        commit_msg_lsn: Lsn,
        dir: &std::path::Path,
    ) -> Result<Replay, AssembleError> {
        let file = match buf.spill {
            Some((mut f, _)) => {
                f.seek(SeekFrom::Start(0)).map_err(spill_err(xid, dir))?;
                Some(f)
            }
            None => None,
        };
        Ok(Replay {
            begin: Some(Ordered {
                lsn: begin.final_lsn,
                message: Message::Begin(begin),
            }),
            file,
            block: BytesMut::new(),
            file_left: buf.spilled_entries,
            memory: buf.memory.into_iter(),
            commit: Some(Ordered {
                lsn: commit_msg_lsn,
                message: Message::Commit(commit),
            }),
            xid,
            dir: dir.to_path_buf(),
        })
    }

    fn decode(&self, lsn: Lsn, data: &Bytes) -> Result<Ordered, AssembleError> {
        let message = pgoutput::decode_message(data, true)
            .map_err(|source| AssembleError::Decode { lsn, source })?;
        Ok(Ordered { lsn, message })
    }

    fn read_file_entry(&mut self) -> Result<Option<(Lsn, Bytes)>, AssembleError> {
        if self.file_left == 0 {
            return Ok(None);
        }
        self.fill(12)?;
        let head = self.block.split_to(12);
        let lsn = Lsn(u64::from_be_bytes([
            head[0], head[1], head[2], head[3], head[4], head[5], head[6], head[7],
        ]));
        let len = u32::from_be_bytes([head[8], head[9], head[10], head[11]]) as usize;
        self.fill(len)?;
        self.file_left -= 1;
        Ok(Some((lsn, self.block.split_to(len).freeze())))
    }

    /// Reads from the spill file until `n` bytes are in `block`, at least
    /// [`READ_BLOCK`] at a time.
    fn fill(&mut self, n: usize) -> Result<(), AssembleError> {
        let err = spill_err(self.xid, &self.dir);
        while self.block.len() < n {
            let Some(f) = self.file.as_mut() else {
                return Ok(());
            };
            let have = self.block.len();
            let want = (n - have).max(READ_BLOCK);
            self.block.resize(have + want, 0);
            let read = f.read(&mut self.block[have..]);
            let got = *read.as_ref().unwrap_or(&0);
            self.block.truncate(have + got);
            match read {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(err(e)),
                Ok(_) => {}
            }
            if got == 0 {
                return Err(err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the spill file ends before its last entry",
                )));
            }
        }
        Ok(())
    }
}

impl Iterator for Replay {
    type Item = Result<Ordered, AssembleError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(b) = self.begin.take() {
            return Some(Ok(b));
        }
        match self.read_file_entry() {
            Err(e) => return Some(Err(e)),
            Ok(Some((lsn, data))) => return Some(self.decode(lsn, &data)),
            Ok(None) => {}
        }
        if let Some(e) = self.memory.next() {
            return Some(self.decode(e.lsn, &e.data));
        }
        self.commit.take().map(Ok)
    }
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;

    use super::*;
    use crate::pgoutput::{encode_message, Insert, StreamCommit, StreamStart, TupleValue};

    fn raw(m: &Message) -> Bytes {
        let mut b = BytesMut::new();
        encode_message(m, &mut b);
        b.freeze()
    }

    fn insert(xid: Xid, i: u64) -> Message {
        Message::Insert(Insert {
            xid: Some(xid),
            rel_id: 16384,
            new: vec![TupleValue::Text(Bytes::from(format!(
                "row {i:08} {}",
                "x".repeat(40)
            )))],
        })
    }

    /// A streamed transaction far over the memory limit spills, and its
    /// replay gives back every change, in order and intact, across several
    /// read blocks of the spill file, whether it was pushed decoded or as
    /// received ([`Assembler::push_streamed`]).
    #[test]
    fn spilled_replay_gives_back_every_change() {
        const N: u64 = 20_000; // ~1.4 MB: several read blocks
        let dir = tempfile::tempdir().expect("temp dir");
        let mut a = Assembler::new(64 << 10, dir.path().to_path_buf());
        let xid = 7;
        let start = Message::StreamStart(StreamStart {
            xid,
            first_segment: true,
        });
        assert!(matches!(
            a.push(Lsn(1), raw(&start), start),
            Ok(Output::None)
        ));
        for i in 0..N {
            let m = insert(xid, i);
            let r = raw(&m);
            if i % 2 == 0 {
                assert!(matches!(a.push(Lsn(10 + i), r, m), Ok(Output::None)));
            } else {
                assert!(a.push_streamed(Lsn(10 + i), &r, xid).expect("buffered"));
            }
        }
        assert!(matches!(
            a.push(Lsn(2), Bytes::new(), Message::StreamStop),
            Ok(Output::None)
        ));
        assert!(
            !a.push_streamed(Lsn(3), &raw(&insert(xid, 0)), xid)
                .expect("no block"),
            "outside a stream block nothing is taken raw"
        );
        let commit = Message::StreamCommit(StreamCommit {
            xid,
            flags: 0,
            commit_lsn: Lsn(100_000),
            end_lsn: Lsn(100_001),
            commit_ts: 0,
        });
        let Ok(Output::Replay(replay)) = a.push(Lsn(100_000), raw(&commit), commit) else {
            panic!("a stream commit replays");
        };
        let got: Vec<Ordered> = replay.collect::<Result<_, _>>().expect("replay");
        assert_eq!(got.len() as u64, N + 2);
        assert!(matches!(got[0].message, Message::Begin(_)));
        assert!(matches!(got[got.len() - 1].message, Message::Commit(_)));
        for (i, o) in got[1..got.len() - 1].iter().enumerate() {
            assert_eq!(o.lsn, Lsn(10 + i as u64));
            assert_eq!(o.message, insert(xid, i as u64), "change {i}");
        }
    }
}
