//! Delivery reports → acknowledgements, in commit order.
//!
//! Every produced record belongs to an *epoch*: the records between two
//! [`SinkItem::Commit`](crate::sink::SinkItem)s, i.e. one source
//! transaction (or the non-transactional messages before a bare commit).
//! The record's delivery opaque is its epoch number. An epoch is closed by
//! the commit's token; the token is handed to the [`Acker`] when the epoch
//! is closed, every one of its records has a *successful* delivery report
//! (acks=all: in every in-sync replica) and every earlier epoch was
//! acknowledged. A failed delivery never decrements its epoch's count, so
//! that epoch and every later one stay unacknowledged: a position whose
//! records are not all in Kafka cannot be confirmed, whatever happens
//! afterwards. The failure is kept for the sink's task, which stops with it.
//!
//! The acknowledgement happens on librdkafka's polling thread, right when
//! the last report comes in (the tracker is thread-safe).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{DeliveryResult, ProducerContext};

use crate::pipeline::ack::{Acker, CommitToken};

/// A record that Kafka did not take.
#[derive(Clone, Debug)]
pub struct DeliveryFailure {
    pub error: KafkaError,
    pub topic: String,
    pub partition: i32,
}

#[derive(Debug, Default)]
struct Epoch {
    outstanding: u64,
    /// Set when the epoch is closed by a commit.
    token: Option<CommitToken>,
    closed: bool,
}

#[derive(Debug, Default)]
struct State {
    /// Number of the epoch at `epochs[0]`.
    front: u64,
    /// Never empty: the last one is open.
    epochs: VecDeque<Epoch>,
    failure: Option<DeliveryFailure>,
    acker: Option<Acker>,
    in_flight: u64,
    delivered: u64,
}

impl State {
    /// Acknowledges the closed, fully delivered epochs at the front.
    fn drain(&mut self) {
        while self.epochs.len() > 1 {
            let Some(e) = self.epochs.front() else { break };
            if !e.closed || e.outstanding > 0 {
                break;
            }
            if let Some(e) = self.epochs.pop_front() {
                self.front += 1;
                if let (Some(t), Some(a)) = (e.token, self.acker.as_ref()) {
                    a.ack(t);
                }
            }
        }
    }
}

/// Shared between the sink's task and librdkafka's polling thread.
#[derive(Debug, Default)]
pub struct Shared {
    state: Mutex<State>,
    /// Woken on a failure, and on every delivery while the task waits for
    /// room in the producer queue.
    pub wake: tokio::sync::Notify,
    waiting: AtomicBool,
}

impl Shared {
    pub fn new() -> Arc<Shared> {
        let s = Shared::default();
        s.lock().epochs.push_back(Epoch::default());
        Arc::new(s)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update leaves the state consistent; a panic elsewhere does
        // not make it unusable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Where acknowledgements go (non-transactional mode).
    pub fn set_acker(&self, acker: Acker) {
        self.lock().acker = Some(acker);
    }

    /// Counts a record about to be produced; returns its opaque.
    pub fn add(&self) -> usize {
        let mut st = self.lock();
        st.in_flight += 1;
        let id = st.front + st.epochs.len() as u64 - 1;
        if let Some(e) = st.epochs.back_mut() {
            e.outstanding += 1;
        }
        id as usize
    }

    /// Un-counts a record that librdkafka refused to enqueue.
    pub fn remove(&self, opaque: usize) {
        let mut st = self.lock();
        st.in_flight = st.in_flight.saturating_sub(1);
        let i = (opaque as u64).wrapping_sub(st.front) as usize;
        if let Some(e) = st.epochs.get_mut(i) {
            e.outstanding = e.outstanding.saturating_sub(1);
        }
        st.drain();
    }

    /// Closes the open epoch with the commit's token (acknowledged once
    /// its records are delivered) and opens the next.
    pub fn close(&self, token: Option<CommitToken>) {
        let mut st = self.lock();
        if let Some(e) = st.epochs.back_mut() {
            e.token = token;
            e.closed = true;
        }
        st.epochs.push_back(Epoch::default());
        st.drain();
    }

    pub fn failure(&self) -> Option<DeliveryFailure> {
        self.lock().failure.clone()
    }

    /// Records handed to librdkafka without a delivery report yet.
    pub fn in_flight(&self) -> u64 {
        self.lock().in_flight
    }

    /// Successful deliveries so far.
    pub fn delivered(&self) -> u64 {
        self.lock().delivered
    }

    /// Closed epochs not yet acknowledged.
    pub fn unacked_epochs(&self) -> usize {
        self.lock().epochs.len() - 1
    }

    /// Marks that the task waits for a delivery (room in the queue).
    pub fn want_wake(&self, on: bool) {
        self.waiting.store(on, Ordering::SeqCst);
    }

    fn report(&self, epoch: usize, result: Result<(), DeliveryFailure>) {
        let mut st = self.lock();
        st.in_flight = st.in_flight.saturating_sub(1);
        match result {
            Ok(()) => {
                st.delivered += 1;
                let i = (epoch as u64).wrapping_sub(st.front) as usize;
                if let Some(e) = st.epochs.get_mut(i) {
                    e.outstanding = e.outstanding.saturating_sub(1);
                }
                st.drain();
                drop(st);
                if self.waiting.load(Ordering::SeqCst) {
                    self.wake.notify_one();
                }
            }
            Err(f) => {
                // The first failure becomes the sink's error, logged once
                // where it is handled (a retry's WARN or the exit).
                tracing::debug!(topic = %f.topic, partition = f.partition, error = %f.error, "Kafka did not take a record");
                st.failure.get_or_insert(f);
                drop(st);
                self.wake.notify_one();
            }
        }
    }
}

/// The producer's context: delivery reports and librdkafka's logs.
pub struct Context {
    pub shared: Arc<Shared>,
    pub sink: String,
}

impl ClientContext for Context {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        let sink = self.sink.as_str();
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => tracing::error!(sink, fac, "librdkafka: {message}"),
            RDKafkaLogLevel::Warning => tracing::warn!(sink, fac, "librdkafka: {message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(sink, fac, "librdkafka: {message}")
            }
            RDKafkaLogLevel::Debug => tracing::debug!(sink, fac, "librdkafka: {message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // Broker connection problems are retried by librdkafka; records
        // that cannot be delivered in time fail through their reports.
        tracing::warn!(sink = %self.sink, error = %error, "Kafka client: {reason}");
    }
}

impl ProducerContext for Context {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, epoch: usize) {
        let r = match result {
            Ok(_) => Ok(()),
            Err((error, msg)) => Err(DeliveryFailure {
                error: error.clone(),
                topic: msg.topic().to_string(),
                partition: msg.partition(),
            }),
        };
        self.shared.report(epoch, r);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::ack::Tracker;
    use crate::Lsn;
    use rdkafka::types::RDKafkaErrorCode;

    #[test]
    fn acks_in_order_only_after_every_report() {
        let (t, mut ackers, _rx) = Tracker::new(&[Lsn(0)], Lsn(0));
        let s = Shared::new();
        s.set_acker(ackers.remove(0));
        let a1 = s.add();
        let a2 = s.add();
        s.close(Some(t.issue(0, Lsn(10))));
        let b1 = s.add();
        s.close(Some(t.issue(0, Lsn(20))));
        s.close(Some(t.issue(0, Lsn(30)))); // a bare commit
        s.report(b1, Ok(()));
        assert_eq!(t.confirmed(), Lsn(0), "epoch 0 still in flight");
        s.report(a1, Ok(()));
        assert_eq!(t.confirmed(), Lsn(0));
        s.report(a2, Ok(()));
        assert_eq!(t.confirmed(), Lsn(30));
        assert_eq!(s.in_flight(), 0);
        assert_eq!(s.unacked_epochs(), 0);
    }

    #[test]
    fn a_failed_record_blocks_its_epoch_and_every_later_one() {
        let (t, mut ackers, _rx) = Tracker::new(&[Lsn(0)], Lsn(0));
        let s = Shared::new();
        s.set_acker(ackers.remove(0));
        let a = s.add();
        s.close(Some(t.issue(0, Lsn(10))));
        let b = s.add();
        s.close(Some(t.issue(0, Lsn(20))));
        let c = s.add();
        s.close(Some(t.issue(0, Lsn(30))));
        s.report(a, Ok(()));
        assert_eq!(t.confirmed(), Lsn(10));
        s.report(
            b,
            Err(DeliveryFailure {
                error: KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut),
                topic: "t".into(),
                partition: 0,
            }),
        );
        s.report(c, Ok(()));
        assert_eq!(t.confirmed(), Lsn(10));
        assert!(s.failure().is_some());
        // A refused enqueue is un-counted.
        let d = s.add();
        s.remove(d);
        assert_eq!(s.in_flight(), 0);
    }
}
