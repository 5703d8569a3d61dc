//! Kafka: the launch consumer with ordered offset tracking, the producer, the run-state view.
