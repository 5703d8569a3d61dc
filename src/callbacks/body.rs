//! Reading a request body within its limits, for both callback endpoints (v4 callbacks and v3
//! webhooks): a size (reading stops as soon as the body grows past it, since chunked bodies
//! declare no size), a time to arrive (a stalled or trickling sender cannot hold its buffer
//! forever), and a share of the instance's budget of body bytes in memory (many large
//! callbacks at once cannot take more than `callbacks.max_buffered_bytes` between them; past
//! it the sender is told to come back later). Each endpoint maps the outcome onto its own
//! refusals.

use axum::body::Body;
use bytes::BytesMut;
use futures::StreamExt;
use prometheus::IntGauge;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Why a body was not read whole.
#[derive(Debug)]
pub enum BodyError {
    /// The connection failed mid-body.
    Unreadable(String),
    /// The body grew past `limit` bytes.
    TooLarge { limit: usize },
    /// The body had not arrived whole `after` this long.
    TimedOut { after: Duration },
    /// The bodies in memory would pass the instance's budget of `budget` bytes.
    OverBudget { budget: usize },
}

/// The body bytes every request of the instance may hold in memory together, from their first
/// byte read until their answer (their records are acknowledged by then).
#[derive(Debug, Clone)]
pub struct BodyBudget {
    bytes: Arc<Semaphore>,
    capacity: usize,
    /// Bytes held, for operators (`callback_body_bytes`).
    held: Option<IntGauge>,
}

impl BodyBudget {
    /// A budget of `capacity` bytes (capped at what a semaphore can count).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.min(Semaphore::MAX_PERMITS);
        Self {
            bytes: Arc::new(Semaphore::new(capacity)),
            capacity,
            held: None,
        }
    }

    /// Reports the bytes held on `gauge`.
    pub fn with_gauge(mut self, gauge: IntGauge) -> Self {
        self.held = Some(gauge);
        self
    }

    /// Bytes not held by any body now.
    pub fn available(&self) -> usize {
        self.bytes.available_permits()
    }

    /// Takes `n` more bytes into `share`, or refuses without waiting: a request waiting for
    /// room would hold its share meanwhile, and the sender can retry.
    fn take(&self, share: &mut BudgetShare, n: usize) -> Result<(), BodyError> {
        let over = || BodyError::OverBudget {
            budget: self.capacity,
        };
        let n = u32::try_from(n).map_err(|_| over())?;
        let more = self
            .bytes
            .clone()
            .try_acquire_many_owned(n)
            .map_err(|_| over())?;
        match &mut share.permit {
            Some(held) => held.merge(more),
            None => share.permit = Some(more),
        }
        if let Some(gauge) = &self.held {
            gauge.add(i64::from(n));
            share.gauge = Some(gauge.clone());
        }
        Ok(())
    }
}

/// What one body may take.
#[derive(Debug, Clone)]
pub struct BodyLimits {
    /// Largest body, in bytes.
    pub max_bytes: usize,
    /// Longest time from the first poll of the body until its last byte.
    pub timeout: Duration,
    /// The instance's budget this body takes its bytes from.
    pub budget: BodyBudget,
}

/// A body read whole, holding its share of the budget until dropped: keep it until the
/// request is answered.
#[derive(Debug)]
pub struct ReadBody {
    pub bytes: BytesMut,
    hold: BudgetShare,
}

/// A body's share of the budget, given back when dropped.
#[derive(Debug, Default)]
pub struct BudgetShare {
    permit: Option<OwnedSemaphorePermit>,
    gauge: Option<IntGauge>,
}

impl Drop for BudgetShare {
    fn drop(&mut self) {
        if let (Some(permit), Some(gauge)) = (&self.permit, &self.gauge) {
            gauge.sub(i64::try_from(permit.num_permits()).unwrap_or(i64::MAX));
        }
    }
}

impl ReadBody {
    /// The bytes, and the share to keep until the answer.
    pub fn into_parts(self) -> (BytesMut, BudgetShare) {
        (self.bytes, self.hold)
    }
}

/// Reads `body` within `limits`.
pub async fn read_limited(body: Body, limits: &BodyLimits) -> Result<ReadBody, BodyError> {
    let read = read_within_budget(body, limits.max_bytes, &limits.budget);
    tokio::time::timeout(limits.timeout, read)
        .await
        .unwrap_or(Err(BodyError::TimedOut {
            after: limits.timeout,
        }))
}

async fn read_within_budget(
    body: Body,
    limit: usize,
    budget: &BodyBudget,
) -> Result<ReadBody, BodyError> {
    let mut stream = body.into_data_stream();
    let mut bytes = BytesMut::new();
    let mut hold = BudgetShare::default();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| BodyError::Unreadable(e.to_string()))?;
        if bytes.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge { limit });
        }
        budget.take(&mut hold, chunk.len())?;
        bytes.extend_from_slice(&chunk);
    }
    Ok(ReadBody { bytes, hold })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn limits(max_bytes: usize, budget: &BodyBudget) -> BodyLimits {
        BodyLimits {
            max_bytes,
            timeout: Duration::from_secs(5),
            budget: budget.clone(),
        }
    }

    /// A body that sends `chunks` and then, if `stall`, never ends.
    fn streamed(chunks: Vec<&'static [u8]>, stall: bool) -> Body {
        let items = futures::stream::iter(
            chunks
                .into_iter()
                .map(|c| Ok::<_, std::io::Error>(Bytes::from_static(c))),
        );
        if stall {
            Body::from_stream(items.chain(futures::stream::pending()))
        } else {
            Body::from_stream(items)
        }
    }

    #[tokio::test]
    async fn a_body_within_its_limits_is_read_whole_and_holds_its_bytes_until_dropped() {
        let budget = BodyBudget::new(100);
        let read = read_limited(streamed(vec![b"abc", b"defg"], false), &limits(10, &budget))
            .await
            .unwrap();
        assert_eq!(&read.bytes[..], b"abcdefg");
        assert_eq!(budget.available(), 93);
        drop(read);
        assert_eq!(budget.available(), 100);
    }

    #[tokio::test]
    async fn the_bytes_held_are_reported_on_the_gauge_until_the_body_is_dropped() {
        let gauge = IntGauge::new("held", "held").unwrap();
        let budget = BodyBudget::new(100).with_gauge(gauge.clone());
        let read = read_limited(streamed(vec![b"abc", b"de"], false), &limits(10, &budget))
            .await
            .unwrap();
        assert_eq!(gauge.get(), 5);
        let (_bytes, share) = read.into_parts();
        drop(share);
        assert_eq!(gauge.get(), 0);
        assert_eq!(budget.available(), 100);
    }

    #[tokio::test]
    async fn a_body_growing_past_its_limit_is_refused_and_releases_what_it_took() {
        let budget = BodyBudget::new(100);
        let e = read_limited(
            streamed(vec![b"abcdef", b"ghijk"], false),
            &limits(10, &budget),
        )
        .await
        .unwrap_err();
        assert!(matches!(e, BodyError::TooLarge { limit: 10 }), "{e:?}");
        assert_eq!(budget.available(), 100);
    }

    #[tokio::test]
    async fn a_body_past_the_shared_budget_is_refused_while_others_hold_it() {
        let budget = BodyBudget::new(10);
        let first = read_limited(streamed(vec![b"abcdefgh"], false), &limits(10, &budget))
            .await
            .unwrap();
        let e = read_limited(streamed(vec![b"abc"], false), &limits(10, &budget))
            .await
            .unwrap_err();
        assert!(matches!(e, BodyError::OverBudget { budget: 10 }), "{e:?}");
        drop(first);
        let again = read_limited(streamed(vec![b"abc"], false), &limits(10, &budget)).await;
        assert_eq!(&again.unwrap().bytes[..], b"abc");
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stops_arriving_times_out_and_releases_its_bytes() {
        let budget = BodyBudget::new(100);
        let limits = BodyLimits {
            timeout: Duration::from_secs(30),
            ..limits(10, &budget)
        };
        let e = read_limited(streamed(vec![b"abcd"], true), &limits)
            .await
            .unwrap_err();
        assert!(
            matches!(e, BodyError::TimedOut { after } if after == Duration::from_secs(30)),
            "{e:?}"
        );
        assert_eq!(budget.available(), 100);
    }
}
