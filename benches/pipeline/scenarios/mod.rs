//! The parts of the benchmark: each makes its source data, lets every
//! contender take its turns, and adds the results to the report.

pub mod backfill;
pub mod backlog;
pub mod copy;
pub mod kafka;
pub mod latency;
pub mod memory;

/// `base` scaled by `--scale`, at least 1.
pub fn scaled(base: u64, scale: f64) -> u64 {
    ((base as f64 * scale).round() as u64).max(1)
}
