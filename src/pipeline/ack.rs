//! The ack tracker: which source position may be confirmed.
//!
//! For every transaction the fan-out dispatches, each sink gets a
//! [`CommitToken`] (in commit order, numbered per sink). A sink hands a token
//! back to its [`Acker`] once that transaction is durable in its destination;
//! handing back token N covers every earlier token of that sink. The tracker
//! then confirms `min over sinks of the end LSN of the last acknowledged
//! token` — a prefix in commit order that every sink has.
//!
//! Three things hold by construction rather than by care:
//! - **Only the fan-out issues tokens.** [`Tracker::new`] makes one
//!   [`Issuer`], which is neither `Clone` nor constructible elsewhere; the
//!   pipeline hands it to the fan-out, which issues a token only after it
//!   queued the whole transaction for the sink. The [`Tracker`] handles
//!   that the stats and the stream loop keep can read positions, not make
//!   tokens.
//! - **A token goes back only to its own sink.** [`Acker::ack`] of another
//!   sink's token is an error the sink returns (it is a bug in whoever
//!   routed the token, and confirming on its strength could skip a sink).
//! - **Only the tracker makes a confirmable position.** The replication
//!   stream confirms a [`Confirmable`], which only the tracker creates.
//!
//! Sinks whose work completes out of order (records delivered in any
//! order, several connections committing parts of one batch) release their
//! tokens through [`InOrder`]: complete in any order, release strictly in
//! order.
//!
//! When every issued token has come back ([`Tracker::idle`]) and the source
//! is between transactions, nothing received is in flight: the fan-out then
//! sends a keepalive's position to every sink as an empty transaction, so
//! that idle slots do not pin WAL and still only advance through acks.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{watch, Notify};

use crate::Lsn;

/// Permission for one sink to release one transaction's end position.
/// Not `Clone`, not constructible outside this module: only
/// [`Issuer::issue`] makes one.
#[derive(Debug)]
pub struct CommitToken {
    /// The tracker that issued it ([`Tracker::id`]).
    tracker: u64,
    sink: usize,
    seq: u64,
    end_lsn: Lsn,
}

impl CommitToken {
    /// Where this transaction ends: the position it releases.
    pub fn end_lsn(&self) -> Lsn {
        self.end_lsn
    }
}

/// A position every sink has durably: what the replication stream may
/// confirm to the source. Only the tracker makes one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Confirmable(Lsn);

impl Confirmable {
    pub fn lsn(self) -> Lsn {
        self.0
    }
}

/// A token handed to the acker of a sink it was not issued for (another
/// sink's, or one of another tracker).
#[derive(Debug, thiserror::Error)]
#[error(
    "the commit token of sink #{token_sink}{} (ending at {end_lsn}) was handed back to the acker \
     of sink #{acker_sink}; nothing was acknowledged (a bug in pgbridge's routing: please report it)",
    if *.other_tracker { " of another tracker" } else { "" }
)]
pub struct ForeignToken {
    pub token_sink: usize,
    pub acker_sink: usize,
    pub end_lsn: Lsn,
    pub other_tracker: bool,
}

#[derive(Debug, Clone)]
struct SinkState {
    issued_seq: u64,
    acked_seq: u64,
    /// End LSN of the last acknowledged token, or the sink's own durable
    /// position at start.
    acked_lsn: Lsn,
    /// Source commit time of the last transaction acknowledged, when known
    /// (PostgreSQL microseconds since 2000-01-01).
    acked_commit_ts: Option<i64>,
}

#[derive(Debug)]
struct State {
    sinks: Vec<SinkState>,
    /// Highest position confirmed so far (never goes backwards).
    confirmed: Lsn,
    /// The position confirmed when the tracker was made.
    initial: Lsn,
    /// (end LSN, commit time) of dispatched transactions, in commit order,
    /// from the last one every sink acknowledged on: how a sink's
    /// acknowledged position turns into a commit time (lag in seconds).
    /// Bounded by the transactions in flight.
    commit_times: VecDeque<(Lsn, i64)>,
}

/// Reads the positions: shared by the stats, the stream loop, the issuer
/// and the ackers. It cannot issue tokens (see [`Issuer`]).
#[derive(Clone, Debug)]
pub struct Tracker {
    /// Unique per [`Tracker::new`]: its tokens are good for its ackers only.
    id: u64,
    state: Arc<Mutex<State>>,
    confirmed_tx: Arc<watch::Sender<Confirmable>>,
    /// Woken on every acknowledgement (waiters for a sink position).
    acked: Arc<Notify>,
}

/// The one handle that makes [`CommitToken`]s; owned by the fan-out.
#[derive(Debug)]
pub struct Issuer {
    tracker: Tracker,
}

/// A sink's handle for returning tokens.
#[derive(Debug)]
pub struct Acker {
    sink: usize,
    tracker: Tracker,
}

impl Acker {
    /// Releases `token`'s transaction (and every earlier one of this sink).
    /// Call only once the transaction is durable in the destination. A
    /// token of another sink releases nothing and is an error.
    pub fn ack(&self, token: CommitToken) -> Result<(), ForeignToken> {
        self.check(&token)?;
        self.tracker.ack(token);
        Ok(())
    }

    fn check(&self, token: &CommitToken) -> Result<(), ForeignToken> {
        if token.sink == self.sink && token.tracker == self.tracker.id {
            Ok(())
        } else {
            Err(ForeignToken {
                token_sink: token.sink,
                acker_sink: self.sink,
                end_lsn: token.end_lsn,
                other_tracker: token.tracker != self.tracker.id,
            })
        }
    }
}

impl Issuer {
    /// A token for sink `sink` for the transaction ending at `end_lsn`;
    /// call after every event of that transaction was queued for the sink.
    pub fn issue(&mut self, sink: usize, end_lsn: Lsn) -> CommitToken {
        let mut st = self.tracker.lock();
        let s = &mut st.sinks[sink];
        s.issued_seq += 1;
        CommitToken {
            tracker: self.tracker.id,
            sink,
            seq: s.issued_seq,
            end_lsn,
        }
    }

    /// Records the commit time of the transaction ending at `end_lsn`
    /// (call before issuing its tokens, in commit order): what
    /// [`Tracker::sink_lag`] reports once a sink acknowledges it.
    pub fn commit_time(&mut self, end_lsn: Lsn, commit_ts: i64) {
        let mut st = self.tracker.lock();
        if st.commit_times.back().is_none_or(|(l, _)| *l < end_lsn) {
            st.commit_times.push_back((end_lsn, commit_ts));
        }
    }

    /// The positions this issuer's tokens release.
    pub fn tracker(&self) -> &Tracker {
        &self.tracker
    }
}

impl Tracker {
    /// A tracker for `start.len()` sinks; `start[i]` is what sink i already
    /// has durably (its `open()` position), `confirmed` what the slot has.
    /// Returns the reading handle, the only issuer, one acker per sink and
    /// the confirmable position as it moves.
    pub fn new(
        start: &[Lsn],
        confirmed: Lsn,
    ) -> (Tracker, Issuer, Vec<Acker>, watch::Receiver<Confirmable>) {
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        let (tx, rx) = watch::channel(Confirmable(confirmed));
        let tracker = Tracker {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            state: Arc::new(Mutex::new(State {
                sinks: start
                    .iter()
                    .map(|&l| SinkState {
                        issued_seq: 0,
                        acked_seq: 0,
                        acked_lsn: l,
                        acked_commit_ts: None,
                    })
                    .collect(),
                confirmed,
                initial: confirmed,
                commit_times: VecDeque::new(),
            })),
            confirmed_tx: Arc::new(tx),
            acked: Arc::new(Notify::new()),
        };
        let ackers = (0..start.len())
            .map(|sink| Acker {
                sink,
                tracker: tracker.clone(),
            })
            .collect();
        let issuer = Issuer {
            tracker: tracker.clone(),
        };
        (tracker, issuer, ackers, rx)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves consistent state (every
        // update is a single assignment), so poisoning is ignored.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes back a token already checked to belong to its sink.
    fn ack(&self, token: CommitToken) {
        let mut st = self.lock();
        let Some(s) = st.sinks.get_mut(token.sink) else {
            return;
        };
        if token.seq <= s.acked_seq {
            return; // an older token after a newer one: nothing new
        }
        s.acked_seq = token.seq;
        s.acked_lsn = s.acked_lsn.max(token.end_lsn);
        let acked_lsn = s.acked_lsn;
        let upto = st.commit_times.partition_point(|(l, _)| *l <= acked_lsn);
        if let Some(&(_, ts)) = upto.checked_sub(1).and_then(|i| st.commit_times.get(i)) {
            st.sinks[token.sink].acked_commit_ts = Some(ts);
        }
        let min = st
            .sinks
            .iter()
            .map(|s| s.acked_lsn)
            .min()
            .unwrap_or(Lsn::ZERO);
        // Every sink is past these: no lookup needs them any more.
        let done = st.commit_times.partition_point(|(l, _)| *l <= min);
        st.commit_times.drain(..done);
        if min > st.confirmed {
            st.confirmed = min;
            self.confirmed_tx.send_replace(Confirmable(min));
        }
        drop(st);
        self.acked.notify_waiters();
    }
    /// Sink `i`'s lag in time at `now` (both PostgreSQL microseconds):
    /// while it has transactions pending, the age of the commit time of
    /// the last one it acknowledged (of the oldest pending one when it
    /// has acknowledged none yet); zero with nothing pending.
    pub fn sink_lag(&self, i: usize, now: i64) -> std::time::Duration {
        let st = self.lock();
        let Some(s) = st.sinks.get(i) else {
            return std::time::Duration::ZERO;
        };
        if s.acked_seq == s.issued_seq {
            return std::time::Duration::ZERO;
        }
        let ts = s.acked_commit_ts.or_else(|| {
            st.commit_times
                .iter()
                .find(|(l, _)| *l > s.acked_lsn)
                .map(|(_, ts)| *ts)
        });
        ts.map(|ts| std::time::Duration::from_micros(now.saturating_sub(ts).max(0) as u64))
            .unwrap_or_default()
    }

    /// Resolves at the next acknowledgement of any sink. Make the future
    /// (and `enable` it) before looking at the positions, so that an
    /// acknowledgement in between is not missed.
    pub fn acked(&self) -> tokio::sync::futures::Notified<'_> {
        self.acked.notified()
    }

    /// True when every issued token has been acknowledged.
    pub fn idle(&self) -> bool {
        self.lock()
            .sinks
            .iter()
            .all(|s| s.acked_seq == s.issued_seq)
    }

    /// The highest confirmed position.
    pub fn confirmed(&self) -> Lsn {
        self.lock().confirmed
    }

    /// The highest confirmed position, as the replication stream takes it.
    pub fn confirmable(&self) -> Confirmable {
        Confirmable(self.lock().confirmed)
    }

    /// Whether the confirmed position moved past where this tracker
    /// started: every sink made something new durable.
    pub fn advanced(&self) -> bool {
        let st = self.lock();
        st.confirmed > st.initial
    }

    /// Sink `i`'s (acknowledged, issued) transaction counts: they
    /// differ while transactions wait for the sink.
    pub fn sink_counts(&self, i: usize) -> (u64, u64) {
        self.lock()
            .sinks
            .get(i)
            .map(|s| (s.acked_seq, s.issued_seq))
            .unwrap_or((0, 0))
    }

    /// What sink `i` has acknowledged (for status and metrics).
    pub fn sink_position(&self, i: usize) -> Lsn {
        self.lock()
            .sinks
            .get(i)
            .map(|s| s.acked_lsn)
            .unwrap_or(Lsn::ZERO)
    }
}

/// Ordered release of one sink's tokens: work completes in any order, the
/// tokens go back strictly in commit order.
///
/// The work is grouped into *slots*, numbered from 0. The last slot is
/// open: [`add`](Self::add) counts parts of work into it (records, worker
/// commits), [`commit`](Self::commit) makes it cover a source transaction
/// (a later commit into the same slot covers the earlier ones: acknowledging
/// a token covers every earlier token), [`seal`](Self::seal) ends it and
/// opens the next. A slot's token is released once the slot is sealed,
/// every one of its parts was [`complete`](Self::complete)d, and every
/// earlier slot was released. A part that never completes (a failed
/// delivery) holds back its slot and every later one for good: a position
/// whose work is not all durable cannot be confirmed, whatever happens
/// afterwards.
///
/// Uses: a Kafka epoch per source transaction, a part per record; a
/// parallel-apply batch per slot, a part per worker commit; a sink that
/// commits batches itself seals each batch once it is durable (no parts).
#[derive(Debug)]
pub struct InOrder {
    acker: Acker,
    /// Number of the slot at `slots[0]`.
    front: u64,
    /// Never empty: the last slot is open.
    slots: VecDeque<Slot>,
    /// End LSN of the last token released (`Lsn::ZERO` before the first).
    released: Lsn,
}

#[derive(Debug, Default)]
struct Slot {
    /// Parts added and not completed yet.
    parts: u64,
    token: Option<CommitToken>,
    sealed: bool,
}

impl InOrder {
    /// Releases to `acker`; starts with one open slot, numbered 0.
    pub fn new(acker: Acker) -> InOrder {
        InOrder {
            acker,
            front: 0,
            slots: VecDeque::from([Slot::default()]),
            released: Lsn::ZERO,
        }
    }

    fn open(&mut self) -> &mut Slot {
        if self.slots.is_empty() {
            self.slots.push_back(Slot::default());
        }
        let last = self.slots.len() - 1;
        &mut self.slots[last]
    }

    /// The open slot's number.
    pub fn open_slot(&self) -> u64 {
        self.front + self.slots.len().saturating_sub(1) as u64
    }

    /// Counts `n` more parts of work into the open slot; returns the slot's
    /// number, which [`complete`](Self::complete) takes once per part.
    pub fn add(&mut self, n: u64) -> u64 {
        self.open().parts += n;
        self.open_slot()
    }

    /// One part of slot `slot` is durable. Numbers of released or unknown
    /// slots are ignored.
    pub fn complete(&mut self, slot: u64) {
        let i = slot.wrapping_sub(self.front);
        if let Some(s) = usize::try_from(i).ok().and_then(|i| self.slots.get_mut(i)) {
            s.parts = s.parts.saturating_sub(1);
        }
        self.release();
    }

    /// The open slot covers `token`'s transaction (and the earlier ones of
    /// the slot). A token of another sink is an error and changes nothing.
    pub fn commit(&mut self, token: CommitToken) -> Result<(), ForeignToken> {
        self.acker.check(&token)?;
        self.open().token = Some(token);
        Ok(())
    }

    /// Ends the open slot (released once its parts are complete) and opens
    /// the next.
    pub fn seal(&mut self) {
        self.open().sealed = true;
        self.slots.push_back(Slot::default());
        self.release();
    }

    /// [`commit`](Self::commit) then [`seal`](Self::seal).
    pub fn close(&mut self, token: CommitToken) -> Result<(), ForeignToken> {
        self.commit(token)?;
        self.seal();
        Ok(())
    }

    /// End LSN of the open slot's token: what sealing it would release.
    pub fn open_end(&self) -> Option<Lsn> {
        self.slots.back()?.token.as_ref().map(CommitToken::end_lsn)
    }

    /// Sealed slots not released yet.
    pub fn unreleased(&self) -> usize {
        self.slots.len().saturating_sub(1)
    }

    /// End LSN of the last token released (`Lsn::ZERO` before the first).
    pub fn released(&self) -> Lsn {
        self.released
    }

    /// Pops the sealed, complete slots at the front and acknowledges the
    /// last token among them (it covers the others).
    fn release(&mut self) {
        let mut last = None;
        while self.slots.len() > 1 {
            match self.slots.front() {
                Some(s) if s.sealed && s.parts == 0 => {}
                _ => break,
            }
            if let Some(s) = self.slots.pop_front() {
                self.front += 1;
                if s.token.is_some() {
                    last = s.token;
                }
            }
        }
        if let Some(token) = last {
            self.released = self.released.max(token.end_lsn);
            // Checked when it entered the slot.
            self.acker.tracker.ack(token);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn confirms_the_minimum_prefix() {
        let (t, mut issuer, ackers, rx) = Tracker::new(&[Lsn(0), Lsn(0)], Lsn(0));
        let a1 = issuer.issue(0, Lsn(10));
        let b1 = issuer.issue(1, Lsn(10));
        let a2 = issuer.issue(0, Lsn(20));
        let b2 = issuer.issue(1, Lsn(20));
        ackers[0].ack(a2).expect("own token"); // covers a1
        let _ = a1;
        assert_eq!(rx.borrow().lsn(), Lsn(0), "sink 1 has nothing yet");
        ackers[1].ack(b1).expect("own token");
        assert_eq!(rx.borrow().lsn(), Lsn(10));
        assert!(!t.idle(), "b2 in flight");
        assert!(t.advanced());
        ackers[1].ack(b2).expect("own token");
        assert_eq!(rx.borrow().lsn(), Lsn(20));
        assert_eq!(t.confirmable().lsn(), Lsn(20));
        assert!(t.idle());
    }

    #[test]
    fn never_moves_backwards() {
        let (t, mut issuer, ackers, _rx) = Tracker::new(&[Lsn(50)], Lsn(50));
        let a = issuer.issue(0, Lsn(40)); // a replayed, already-durable transaction
        ackers[0].ack(a).expect("own token");
        assert_eq!(t.confirmed(), Lsn(50));
        assert!(!t.advanced(), "a replay is no progress");
    }

    /// Another sink's token, or another tracker's, is an error, for the
    /// acker and for `InOrder` alike, and releases nothing.
    #[test]
    fn a_foreign_token_is_an_error() {
        let (t, mut issuer, mut ackers, _rx) = Tracker::new(&[Lsn(0), Lsn(0)], Lsn(0));
        let b = issuer.issue(1, Lsn(10));
        let e = ackers[0].ack(b).expect_err("sink 1's token at sink 0");
        assert_eq!((e.token_sink, e.acker_sink, e.end_lsn), (1, 0, Lsn(10)));
        assert!(!e.other_tracker);
        // Sink 0 of another tracker is another sink too.
        let (_, mut other, _, _) = Tracker::new(&[Lsn(0), Lsn(0)], Lsn(0));
        let e = ackers[0]
            .ack(other.issue(0, Lsn(10)))
            .expect_err("another tracker's token");
        assert!(e.other_tracker, "{e}");
        let mut order = InOrder::new(ackers.remove(0));
        let b = issuer.issue(1, Lsn(20));
        assert!(order.close(b).is_err());
        assert_eq!(order.unreleased(), 0, "nothing sealed");
        assert_eq!(t.sink_position(0), Lsn(0));
        assert_eq!(t.sink_position(1), Lsn(0));
    }

    /// Slots complete out of order and are released in order; a slot
    /// that several commits went into releases the last of them.
    #[test]
    fn in_order_releases_a_prefix() {
        let (t, mut issuer, mut ackers, _rx) = Tracker::new(&[Lsn(0)], Lsn(0));
        let mut order = InOrder::new(ackers.remove(0));
        let s0 = order.add(2);
        order.close(issuer.issue(0, Lsn(10))).expect("own");
        let s1 = order.add(1);
        order.commit(issuer.issue(0, Lsn(20))).expect("own");
        order.commit(issuer.issue(0, Lsn(30))).expect("own");
        assert_eq!(order.open_end(), Some(Lsn(30)));
        order.seal();
        order.complete(s1);
        assert_eq!(t.confirmed(), Lsn(0), "slot 0 still has two parts");
        order.complete(s0);
        order.complete(s0);
        assert_eq!(t.confirmed(), Lsn(30));
        assert_eq!(order.released(), Lsn(30));
        assert_eq!(order.unreleased(), 0);
        assert!(t.idle());
        // A sealed slot without parts is released at once.
        order.close(issuer.issue(0, Lsn(40))).expect("own");
        assert_eq!(t.confirmed(), Lsn(40));
    }

    /// Lag in time: while a sink has transactions pending, the age of
    /// the commit time of the last one it acknowledged; nothing pending,
    /// no lag. Commit times of transactions every sink has are let go.
    #[test]
    fn lag_is_the_age_of_the_last_acknowledged_commit() {
        let s = 1_000_000; // one second in microseconds
        let (t, mut issuer, ackers, _rx) = Tracker::new(&[Lsn(0), Lsn(0)], Lsn(0));
        assert_eq!(t.sink_lag(0, 100 * s), std::time::Duration::ZERO);
        issuer.commit_time(Lsn(10), 10 * s);
        let a1 = issuer.issue(0, Lsn(10));
        let b1 = issuer.issue(1, Lsn(10));
        // Nothing acknowledged yet: the oldest pending commit's age.
        assert_eq!(t.sink_lag(0, 12 * s).as_secs(), 2);
        issuer.commit_time(Lsn(20), 20 * s);
        let a2 = issuer.issue(0, Lsn(20));
        let b2 = issuer.issue(1, Lsn(20));
        ackers[0].ack(a1).expect("own token");
        assert_eq!(t.sink_lag(0, 25 * s).as_secs(), 15, "last applied at 10 s");
        ackers[0].ack(a2).expect("own token");
        assert_eq!(
            t.sink_lag(0, 25 * s),
            std::time::Duration::ZERO,
            "caught up"
        );
        ackers[1].ack(b1).expect("own token");
        assert_eq!(t.sink_lag(1, 25 * s).as_secs(), 15);
        ackers[1].ack(b2).expect("own token");
        assert!(t.lock().commit_times.len() <= 1, "pruned");
    }

    /// One sink's view in the property test: its [`InOrder`], and per
    /// sealed slot (in order) its end LSN and the parts not yet completed.
    struct Model {
        order: InOrder,
        slots: Vec<(u64, Lsn, u64)>,
        /// End LSN of the longest prefix of sealed, complete slots.
        durable: Lsn,
    }

    proptest! {
        /// Whatever the interleaving of dispatch and completions — each
        /// sink releasing through an [`InOrder`], its parts completed in
        /// any order — a sink's acknowledged position is exactly the end of
        /// its longest prefix of complete transactions, the confirmed
        /// position never passes a transaction that some sink has not
        /// completed, never moves backwards, and reaches the end once
        /// everything is complete.
        #[test]
        fn confirmed_never_ahead_of_any_sink(
            nsinks in 1usize..4,
            ntx in 1usize..40,
            script in proptest::collection::vec((0usize..64, any::<bool>(), 0u64..3), 0..300),
        ) {
            let (t, mut issuer, ackers, _rx) = Tracker::new(&vec![Lsn(0); nsinks], Lsn(0));
            let mut sinks: Vec<Model> = ackers
                .into_iter()
                .map(|a| Model { order: InOrder::new(a), slots: Vec::new(), durable: Lsn(0) })
                .collect();
            let mut next_tx = 0usize;
            let mut last_confirmed = Lsn(0);
            for (who, dispatch, parts) in script {
                if dispatch && next_tx < ntx {
                    next_tx += 1;
                    let end = Lsn(next_tx as u64 * 100);
                    for (s, m) in sinks.iter_mut().enumerate() {
                        let slot = m.order.add(parts);
                        m.order.close(issuer.issue(s, end)).expect("own token");
                        m.slots.push((slot, end, parts));
                    }
                } else {
                    // Complete one part of a pending slot, any of them.
                    let m = &mut sinks[who % nsinks];
                    let open: Vec<usize> = (0..m.slots.len()).filter(|&i| m.slots[i].2 > 0).collect();
                    if !open.is_empty() {
                        let i = open[who % open.len()];
                        m.slots[i].2 -= 1;
                        m.order.complete(m.slots[i].0);
                    }
                }
                for (s, m) in sinks.iter_mut().enumerate() {
                    let done = m.slots.iter().take_while(|x| x.2 == 0).count();
                    if let Some(&(_, end, _)) = done.checked_sub(1).and_then(|i| m.slots.get(i)) {
                        m.durable = end;
                    }
                    m.slots.drain(..done);
                    prop_assert_eq!(t.sink_position(s), m.durable, "sink {} released out of order", s);
                }
                let c = t.confirmed();
                prop_assert!(c >= last_confirmed, "moved backwards");
                last_confirmed = c;
                let min_durable = sinks.iter().map(|m| m.durable).min().unwrap_or(Lsn(0));
                prop_assert_eq!(c, min_durable);
            }
            for m in sinks.iter_mut() {
                for (slot, _, parts) in m.slots.drain(..) {
                    for _ in 0..parts {
                        m.order.complete(slot);
                    }
                }
                prop_assert_eq!(m.order.unreleased(), 0);
            }
            prop_assert!(t.idle());
            prop_assert_eq!(t.confirmed(), Lsn(next_tx as u64 * 100));
        }
    }
}
