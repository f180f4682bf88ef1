//! How long `run` waits before the next attempt after a transient error.
//!
//! The wait doubles from [`Backoff::FIRST`] up to [`Backoff::MAX`] while
//! attempts keep failing without getting anywhere (a target that is down,
//! a source that refuses connections), so a long outage costs few
//! connection attempts. An attempt that made progress before it failed
//! starts the series again: blips spread over days (a failover, a
//! restarted target, a dropped connection) each cost a short wait, not the
//! 30 s that the tenth blip since start would otherwise get.

use std::time::Duration;

/// What an attempt did before it ended, as far as the backoff cares.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Attempt {
    /// How long it streamed (`None`: it never got to streaming).
    pub streamed_for: Option<Duration>,
    /// Whether the position confirmed to the slot moved while it streamed
    /// (every sink made something durable).
    pub confirmed_moved: bool,
}

impl Attempt {
    /// Streaming this long without an error counts as progress even when
    /// nothing was confirmed (a quiet source whose keepalives confirm
    /// nothing new): the connection and every sink worked.
    pub const HEALTHY_STREAMING: Duration = Duration::from_secs(60);

    /// Whether the attempt got anywhere: it streamed and either confirmed
    /// a new position or streamed for [`Attempt::HEALTHY_STREAMING`].
    pub fn progressed(&self) -> bool {
        match self.streamed_for {
            Some(t) => self.confirmed_moved || t >= Self::HEALTHY_STREAMING,
            None => false,
        }
    }
}

/// The retry policy: exponential while attempts fail without progress,
/// back to the first wait after one that progressed.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(Backoff::FIRST, Backoff::MAX)
    }
}

impl Backoff {
    pub const FIRST: Duration = Duration::from_millis(500);
    pub const MAX: Duration = Duration::from_secs(30);

    pub fn new(first: Duration, max: Duration) -> Backoff {
        Backoff {
            first,
            max: max.max(first),
            next: first,
        }
    }

    /// The wait before the attempt that follows `failed` (which ended in a
    /// transient error).
    pub fn after(&mut self, failed: &Attempt) -> Duration {
        if failed.progressed() {
            self.next = self.first;
        }
        let wait = self.next;
        self.next = (self.next * 2).min(self.max);
        wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOTHING: Attempt = Attempt {
        streamed_for: None,
        confirmed_moved: false,
    };

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn doubles_up_to_the_cap_while_nothing_works() {
        let mut b = Backoff::default();
        let waits: Vec<Duration> = (0..9).map(|_| b.after(&NOTHING)).collect();
        assert_eq!(
            waits,
            [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0].map(secs)
        );
    }

    /// The bug this type fixes: transient blips spread over days, each
    /// after hours of streaming, used to climb to 30 s for good.
    #[test]
    fn blips_after_progress_wait_the_first_delay() {
        let mut b = Backoff::default();
        let streamed = Attempt {
            streamed_for: Some(Duration::from_secs(3 * 3600)),
            confirmed_moved: true,
        };
        for _ in 0..20 {
            assert_eq!(b.after(&streamed), Backoff::FIRST);
        }
    }

    #[test]
    fn progress_resets_an_escalated_series() {
        let mut b = Backoff::default();
        for _ in 0..8 {
            b.after(&NOTHING);
        }
        assert_eq!(b.after(&NOTHING), Backoff::MAX);
        let short_but_confirmed = Attempt {
            streamed_for: Some(Duration::from_millis(200)),
            confirmed_moved: true,
        };
        assert_eq!(b.after(&short_but_confirmed), Backoff::FIRST);
        // Failing again without progress climbs from the start.
        assert_eq!(b.after(&NOTHING), secs(1.0));
        assert_eq!(b.after(&NOTHING), secs(2.0));
    }

    #[test]
    fn what_counts_as_progress() {
        assert!(!NOTHING.progressed());
        // Connected and streamed briefly, nothing confirmed: a sink that
        // fails on its first transaction every time is no progress.
        let brief = Attempt {
            streamed_for: Some(Duration::from_secs(5)),
            confirmed_moved: false,
        };
        assert!(!brief.progressed());
        let long = Attempt {
            streamed_for: Some(Attempt::HEALTHY_STREAMING),
            confirmed_moved: false,
        };
        assert!(long.progressed());
        // A moved position without streaming cannot happen; it is not
        // taken as progress either.
        let odd = Attempt {
            streamed_for: None,
            confirmed_moved: true,
        };
        assert!(!odd.progressed());
    }
}
