//! Delivery reports → acknowledgements, in commit order.
//!
//! At least once, every source transaction's records are one slot of the
//! run's [`InOrder`] (the records between two
//! [`SinkItem::Commit`](crate::sink::SinkItem)s, or the non-transactional
//! messages before a bare commit): each record is a part of its slot, and
//! its delivery opaque is the slot's number. The commit's token closes the
//! slot; it goes back to the tracker once every record of the slot has a
//! *successful* delivery report (acks=all: in every in-sync replica) and
//! every earlier slot was released. A failed delivery never completes its
//! part, so that slot and every later one stay unacknowledged: a position
//! whose records are not all in Kafka cannot be confirmed, whatever happens
//! afterwards. The failure is kept for the sink's task, which stops with it.
//!
//! The release happens on librdkafka's polling thread, right when the last
//! report comes in (the tracker is thread-safe). Records produced before
//! the run (the initial copy, which waits for its own reports) and in
//! exactly-once mode (acknowledged after the Kafka commit) belong to no
//! slot.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{DeliveryResult, ProducerContext};

use crate::pipeline::ack::{CommitToken, ForeignToken, InOrder};

/// The opaque of a record that belongs to no slot.
const NO_SLOT: usize = usize::MAX;

/// A record that Kafka did not take.
#[derive(Clone, Debug)]
pub struct DeliveryFailure {
    pub error: KafkaError,
    pub topic: String,
    pub partition: i32,
}

#[derive(Debug, Default)]
struct State {
    /// The run's ordered release (at least once).
    order: Option<InOrder>,
    failure: Option<DeliveryFailure>,
    in_flight: u64,
    delivered: u64,
}

impl State {
    /// One part of the slot `opaque` is done.
    fn complete(&mut self, opaque: usize) {
        if let (Some(o), false) = (self.order.as_mut(), opaque == NO_SLOT) {
            o.complete(opaque as u64);
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
        Arc::new(Shared::default())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update leaves the state consistent; a panic elsewhere does
        // not make it unusable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Where the run's acknowledgements go (at-least-once mode); records
    /// produced from now on count towards its slots.
    pub fn set_release(&self, order: InOrder) {
        self.lock().order = Some(order);
    }

    /// Counts a record about to be produced; returns its opaque.
    pub fn add(&self) -> usize {
        let mut st = self.lock();
        st.in_flight += 1;
        st.order
            .as_mut()
            .map_or(NO_SLOT, |o| usize::try_from(o.add(1)).unwrap_or(NO_SLOT))
    }

    /// Un-counts a record that librdkafka refused to enqueue.
    pub fn remove(&self, opaque: usize) {
        let mut st = self.lock();
        st.in_flight = st.in_flight.saturating_sub(1);
        st.complete(opaque);
    }

    /// Closes the open slot with the commit's token (released once its
    /// records are delivered) and opens the next. Another sink's token is
    /// an error; without a run's release (exactly-once) the token is kept
    /// by nobody and releases nothing.
    pub fn close(&self, token: CommitToken) -> Result<(), ForeignToken> {
        match self.lock().order.as_mut() {
            Some(o) => o.close(token),
            None => Ok(()),
        }
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

    /// Closed slots not yet released.
    pub fn unreleased(&self) -> usize {
        self.lock().order.as_ref().map_or(0, InOrder::unreleased)
    }

    /// Marks that the task waits for a delivery (room in the queue).
    pub fn want_wake(&self, on: bool) {
        self.waiting.store(on, Ordering::SeqCst);
    }

    fn report(&self, slot: usize, result: Result<(), DeliveryFailure>) {
        let mut st = self.lock();
        st.in_flight = st.in_flight.saturating_sub(1);
        match result {
            Ok(()) => {
                st.delivered += 1;
                st.complete(slot);
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

    fn delivery(&self, result: &DeliveryResult<'_>, slot: usize) {
        let r = match result {
            Ok(_) => Ok(()),
            Err((error, msg)) => Err(DeliveryFailure {
                error: error.clone(),
                topic: msg.topic().to_string(),
                partition: msg.partition(),
            }),
        };
        self.shared.report(slot, r);
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
        let (t, mut issuer, mut ackers, _rx) = Tracker::new(&[Lsn(0)], Lsn(0));
        let s = Shared::new();
        s.set_release(InOrder::new(ackers.remove(0)));
        let a1 = s.add();
        let a2 = s.add();
        s.close(issuer.issue(0, Lsn(10))).expect("own token");
        let b1 = s.add();
        s.close(issuer.issue(0, Lsn(20))).expect("own token");
        s.close(issuer.issue(0, Lsn(30))).expect("own token"); // a bare commit
        s.report(b1, Ok(()));
        assert_eq!(t.confirmed(), Lsn(0), "slot 0 still in flight");
        s.report(a1, Ok(()));
        assert_eq!(t.confirmed(), Lsn(0));
        s.report(a2, Ok(()));
        assert_eq!(t.confirmed(), Lsn(30));
        assert_eq!(s.in_flight(), 0);
        assert_eq!(s.unreleased(), 0);
    }

    #[test]
    fn a_failed_record_blocks_its_slot_and_every_later_one() {
        let (t, mut issuer, mut ackers, _rx) = Tracker::new(&[Lsn(0)], Lsn(0));
        let s = Shared::new();
        s.set_release(InOrder::new(ackers.remove(0)));
        let a = s.add();
        s.close(issuer.issue(0, Lsn(10))).expect("own token");
        let b = s.add();
        s.close(issuer.issue(0, Lsn(20))).expect("own token");
        let c = s.add();
        s.close(issuer.issue(0, Lsn(30))).expect("own token");
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
