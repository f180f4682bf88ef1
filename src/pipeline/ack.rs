//! The ack tracker: which source position may be confirmed.
//!
//! For every transaction the fan-out dispatches, each sink gets a
//! [`CommitToken`] (in commit order, numbered per sink). A sink hands a token
//! back to its [`Acker`] once that transaction is durable in its destination;
//! handing back token N covers every earlier token of that sink. The tracker
//! then confirms `min over sinks of the end LSN of the last acknowledged
//! token` — a prefix in commit order that every sink has. Tokens can only be
//! made by [`Tracker::issue`], which the fan-out calls after it queued the
//! transaction for the sink: there is no way to confirm a position that was
//! not delivered and acknowledged.
//!
//! When every issued token has come back ([`Tracker::idle`]) and the source
//! is between transactions, nothing received is in flight: the fan-out then
//! sends a keepalive's position to every sink as an empty transaction, so
//! that idle slots do not pin WAL and still only advance through acks.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{watch, Notify};

use crate::Lsn;

/// Permission for one sink to release one transaction's end position.
/// Not `Clone`, not constructible outside this module.
#[derive(Debug)]
pub struct CommitToken {
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

/// Shared between the fan-out, the ackers and the confirm loop.
#[derive(Clone, Debug)]
pub struct Tracker {
    state: Arc<Mutex<State>>,
    confirmed_tx: Arc<watch::Sender<Lsn>>,
    /// Woken on every acknowledgement (waiters for a sink position).
    acked: Arc<Notify>,
}

/// A sink's handle for returning tokens.
#[derive(Debug)]
pub struct Acker {
    sink: usize,
    tracker: Tracker,
}

impl Acker {
    /// Releases `token`'s transaction (and every earlier one of this sink).
    /// Call only once the transaction is durable in the destination.
    pub fn ack(&self, token: CommitToken) {
        debug_assert_eq!(token.sink, self.sink, "token of another sink");
        if token.sink != self.sink {
            return;
        }
        self.tracker.ack(token);
    }
}

impl Tracker {
    /// A tracker for `start.len()` sinks; `start[i]` is what sink i already
    /// has durably (its `open()` position), `confirmed` what the slot has.
    pub fn new(start: &[Lsn], confirmed: Lsn) -> (Tracker, Vec<Acker>, watch::Receiver<Lsn>) {
        let (tx, rx) = watch::channel(confirmed);
        let tracker = Tracker {
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
        (tracker, ackers, rx)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves consistent state (every
        // update is a single assignment), so poisoning is ignored.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A token for sink `sink` for the transaction ending at `end_lsn`;
    /// call after every event of that transaction was queued for the sink.
    pub fn issue(&self, sink: usize, end_lsn: Lsn) -> CommitToken {
        let mut st = self.lock();
        let s = &mut st.sinks[sink];
        s.issued_seq += 1;
        CommitToken {
            sink,
            seq: s.issued_seq,
            end_lsn,
        }
    }

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
            self.confirmed_tx.send_replace(min);
        }
        drop(st);
        self.acked.notify_waiters();
    }

    /// Records the commit time of the transaction ending at `end_lsn`
    /// (call before issuing its tokens, in commit order): what
    /// [`sink_lag`](Self::sink_lag) reports once a sink acknowledges it.
    pub fn commit_time(&self, end_lsn: Lsn, commit_ts: i64) {
        let mut st = self.lock();
        if st.commit_times.back().is_none_or(|(l, _)| *l < end_lsn) {
            st.commit_times.push_back((end_lsn, commit_ts));
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn confirms_the_minimum_prefix() {
        let (t, ackers, rx) = Tracker::new(&[Lsn(0), Lsn(0)], Lsn(0));
        let a1 = t.issue(0, Lsn(10));
        let b1 = t.issue(1, Lsn(10));
        let a2 = t.issue(0, Lsn(20));
        let b2 = t.issue(1, Lsn(20));
        ackers[0].ack(a2); // covers a1
        let _ = a1;
        assert_eq!(*rx.borrow(), Lsn(0), "sink 1 has nothing yet");
        ackers[1].ack(b1);
        assert_eq!(*rx.borrow(), Lsn(10));
        assert!(!t.idle(), "b2 in flight");
        assert!(t.advanced());
        ackers[1].ack(b2);
        assert_eq!(*rx.borrow(), Lsn(20));
        assert!(t.idle());
    }

    #[test]
    fn never_moves_backwards() {
        let (t, ackers, _rx) = Tracker::new(&[Lsn(50)], Lsn(50));
        let a = t.issue(0, Lsn(40)); // a replayed, already-durable transaction
        ackers[0].ack(a);
        assert_eq!(t.confirmed(), Lsn(50));
        assert!(!t.advanced(), "a replay is no progress");
    }

    /// Lag in time: while a sink has transactions pending, the age of
    /// the commit time of the last one it acknowledged; nothing pending,
    /// no lag. Commit times of transactions every sink has are let go.
    #[test]
    fn lag_is_the_age_of_the_last_acknowledged_commit() {
        let s = 1_000_000; // one second in microseconds
        let (t, ackers, _rx) = Tracker::new(&[Lsn(0), Lsn(0)], Lsn(0));
        assert_eq!(t.sink_lag(0, 100 * s), std::time::Duration::ZERO);
        t.commit_time(Lsn(10), 10 * s);
        let a1 = t.issue(0, Lsn(10));
        let b1 = t.issue(1, Lsn(10));
        // Nothing acknowledged yet: the oldest pending commit's age.
        assert_eq!(t.sink_lag(0, 12 * s).as_secs(), 2);
        t.commit_time(Lsn(20), 20 * s);
        let a2 = t.issue(0, Lsn(20));
        let b2 = t.issue(1, Lsn(20));
        ackers[0].ack(a1);
        assert_eq!(t.sink_lag(0, 25 * s).as_secs(), 15, "last applied at 10 s");
        ackers[0].ack(a2);
        assert_eq!(
            t.sink_lag(0, 25 * s),
            std::time::Duration::ZERO,
            "caught up"
        );
        ackers[1].ack(b1);
        assert_eq!(t.sink_lag(1, 25 * s).as_secs(), 15);
        ackers[1].ack(b2);
        assert!(t.lock().commit_times.len() <= 1, "pruned");
    }

    proptest! {
        /// Whatever the interleaving of dispatch and (batched, reordered)
        /// acknowledgements, the confirmed position never passes a
        /// transaction that some sink has not acknowledged, never moves
        /// backwards, and reaches the end once everything is acknowledged.
        #[test]
        fn confirmed_never_ahead_of_any_sink(
            nsinks in 1usize..4,
            ntx in 1usize..40,
            script in proptest::collection::vec((0usize..4, any::<bool>()), 0..200),
        ) {
            let (t, ackers, _rx) = Tracker::new(&vec![Lsn(0); nsinks], Lsn(0));
            // pending[sink] = tokens issued, not yet acked, in order.
            let mut pending: Vec<Vec<CommitToken>> = (0..nsinks).map(|_| Vec::new()).collect();
            // durable[sink] = highest end LSN the sink acknowledged.
            let mut durable = vec![Lsn(0); nsinks];
            let mut next_tx = 0usize;
            let mut last_confirmed = Lsn(0);
            for (who, dispatch) in script {
                if dispatch && next_tx < ntx {
                    next_tx += 1;
                    for (s, p) in pending.iter_mut().enumerate() {
                        p.push(t.issue(s, Lsn(next_tx as u64 * 100)));
                    }
                } else {
                    let s = who % nsinks;
                    if !pending[s].is_empty() {
                        // Ack a random-length prefix by returning its last token.
                        let n = (who % pending[s].len()) + 1;
                        let mut batch: Vec<CommitToken> = pending[s].drain(..n).collect();
                        if let Some(last) = batch.pop() {
                            durable[s] = durable[s].max(last.end_lsn());
                            ackers[s].ack(last);
                        }
                    }
                }
                let c = t.confirmed();
                prop_assert!(c >= last_confirmed, "moved backwards");
                last_confirmed = c;
                let min_durable = *durable.iter().min().unwrap_or(&Lsn(0));
                prop_assert!(c <= min_durable, "confirmed {c} ahead of a sink at {min_durable}");
            }
            for (s, p) in pending.iter_mut().enumerate() {
                if let Some(last) = p.pop() {
                    ackers[s].ack(last);
                }
            }
            prop_assert!(t.idle());
            prop_assert_eq!(t.confirmed(), Lsn(next_tx as u64 * 100));
        }
    }
}
