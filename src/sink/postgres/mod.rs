//! The Postgres sink (in progress).
