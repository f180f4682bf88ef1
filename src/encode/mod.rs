//! Event encodings. `json`: the Debezium-compatible envelope used by
//! `pgbridge tail` (and the Kafka sink).

pub mod json;
