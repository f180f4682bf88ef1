//! The contenders: each runs one part's work from its own slot (or copy)
//! and returns its time, CPU use and a note, after checking its result.

pub mod native;
pub mod pgbridge;
pub mod pgcopydb;
pub mod recvlogical;
