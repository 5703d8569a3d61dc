//! The durable callback intake: a verified callback is appended, as it arrived, to the
//! internal callbacks topic (keyed and partitioned by request_id, its chunk and receipt time
//! in headers) and answered 2xx once Kafka acknowledged it. That one write is all the HTTP
//! path waits for; the owner of the request's partition turns the record into results, a
//! status and a state update later, in a transaction.

pub mod payload;

pub use payload::{CallbackPayload, CallbackRun, PayloadError};

use crate::callbacks::{CallbackSink, SinkAck, SinkError};
use crate::kafka::RecordProducer;
use crate::publish::RecordBuilder;
use crate::telemetry::ErrorChain;
use crate::token::CallbackClaims;
use futures::future::BoxFuture;
use std::sync::Arc;
use std::time::Duration;

/// Appends verified callbacks to the callbacks topic.
pub struct CallbackIntake {
    pub records: RecordBuilder,
    pub producer: Arc<RecordProducer>,
    /// Longest wait for Kafka before answering 503.
    pub ack_timeout: Duration,
    /// `Retry-After` of a 503.
    pub retry_after: Duration,
}

impl CallbackSink for CallbackIntake {
    fn accept(
        &self,
        claims: CallbackClaims,
        body: bytes::Bytes,
        results: usize,
    ) -> BoxFuture<'_, Result<SinkAck, SinkError>> {
        Box::pin(async move {
            let record = self.records.callback(
                &claims.request_id,
                claims.chunk,
                chrono::Utc::now(),
                body.to_vec(),
            );
            match self.producer.send_all(vec![record], self.ack_timeout).await {
                Ok(_) => Ok(SinkAck { results }),
                Err(e) => Err(SinkError::Unavailable {
                    retry_after: self.retry_after,
                    reason: ErrorChain(&e).to_string(),
                }),
            }
        })
    }
}
