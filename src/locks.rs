//! Per-request mutual exclusion inside one instance: the launch path and the callback path both
//! read-modify-write a request's run state, and must not interleave for the same request_id.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use tokio::sync::{Mutex, MutexGuard};

/// A fixed set of mutexes, one chosen per request_id by hash: bounded memory whatever the
/// number of requests; two requests sharing a stripe merely wait for each other briefly.
pub struct RequestLocks {
    stripes: Vec<Mutex<()>>,
}

impl RequestLocks {
    pub fn new(stripes: usize) -> Self {
        Self {
            stripes: (0..stripes.max(1)).map(|_| Mutex::new(())).collect(),
        }
    }

    pub async fn lock(&self, request_id: &str) -> MutexGuard<'_, ()> {
        let mut h = DefaultHasher::new();
        request_id.hash(&mut h);
        // The modulo keeps the index within the stripes; the cast cannot truncate meaningfully.
        let i = (h.finish() % self.stripes.len() as u64) as usize;
        self.stripes[i].lock().await
    }
}

impl Default for RequestLocks {
    fn default() -> Self {
        Self::new(1024)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn the_same_request_is_never_held_twice_at_once() {
        let locks = Arc::new(RequestLocks::new(8));
        let guard = locks.lock("r1").await;
        let l2 = locks.clone();
        let waiter = tokio::spawn(async move {
            let _g = l2.lock("r1").await;
        });
        tokio::time::timeout(Duration::from_millis(50), async {
            while !waiter.is_finished() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect_err("second lock must wait while the first is held");
        drop(guard);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
    }
}
