//! Event encodings. `json`: the Debezium-compatible envelope used by
//! `pgbridge tail` and the Kafka sink; `avro`: the same envelope as Avro,
//! with schemas derived from the Relation (Confluent wire format);
//! `connect`: Kafka Connect's JSON-with-schema wrapping of the JSON events.

pub mod avro;
pub mod connect;
pub mod json;
