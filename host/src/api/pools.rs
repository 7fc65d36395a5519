//! Where the API's blocking work runs: redb reads (selects, depot reads, dead letters, the
//! gauges of `/metrics`) and query calls run on tokio's blocking threads, never on the two
//! async workers that serve every connection, and at most `reads_concurrent_max` /
//! `queries_concurrent_max` of each at once. A request that cannot get a place within
//! [`POOL_WAIT`] is answered `503 too-busy` with `Retry-After`.
//!
//! Invariant: a running closure holds one permit of its pool until it returns.

use std::sync::Arc;
use std::time::Duration;

use hyper::StatusCode;
use tokio::sync::Semaphore;

use super::ApiError;

/// How long a request waits for a place in a pool.
pub const POOL_WAIT: Duration = Duration::from_secs(5);

/// The two pools (each a `sluice serve` flag).
#[derive(Clone)]
pub struct Pools {
    reads: Arc<Semaphore>,
    reads_max: usize,
    queries: Arc<Semaphore>,
    queries_max: usize,
    wait: Duration,
}

/// Defaults: [`Pools::new`] with these.
pub const READS_CONCURRENT_MAX: usize = 16;
pub const QUERIES_CONCURRENT_MAX: usize = 8;

impl Default for Pools {
    fn default() -> Self {
        Self::new(READS_CONCURRENT_MAX, QUERIES_CONCURRENT_MAX)
    }
}

impl Pools {
    pub fn new(reads_max: usize, queries_max: usize) -> Self {
        Self {
            reads: Arc::new(Semaphore::new(reads_max.max(1))),
            reads_max: reads_max.max(1),
            queries: Arc::new(Semaphore::new(queries_max.max(1))),
            queries_max: queries_max.max(1),
            wait: POOL_WAIT,
        }
    }

    /// How long a request waits for a place (default [`POOL_WAIT`]).
    pub fn with_wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// Runs a blocking read.
    pub async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        run(
            &self.reads,
            self.wait,
            "reads_concurrent_max",
            self.reads_max,
            f,
        )
        .await
    }

    /// Runs a query call.
    pub async fn query<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        run(
            &self.queries,
            self.wait,
            "queries_concurrent_max",
            self.queries_max,
            f,
        )
        .await
    }
}

async fn run<T: Send + 'static>(
    pool: &Arc<Semaphore>,
    wait: Duration,
    limit_name: &str,
    limit: usize,
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let permit = match tokio::time::timeout(wait, Arc::clone(pool).acquire_owned()).await {
        Ok(Ok(p)) => p,
        _ => {
            let mut e = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too-busy",
                format!(
                    "the {limit_name} limit of {limit} is reached and no place freed within {} ms",
                    wait.as_millis()
                ),
            );
            e.retry_after_s = Some(1);
            return Err(e);
        }
    };
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        f()
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_pool_answers_too_busy_and_frees_its_places() {
        let pools = Pools::new(1, 1).with_wait(Duration::from_millis(100));
        let (hold, release) = std::sync::mpsc::channel::<()>();
        let p = pools.clone();
        let held = tokio::spawn(async move {
            p.read(move || {
                let _ = release.recv();
                Ok(1)
            })
            .await
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        // The query pool is separate: it runs while the read pool is full.
        assert_eq!(pools.query(|| Ok(2)).await.unwrap(), 2);
        let e = pools.read(|| Ok(3)).await.unwrap_err();
        assert_eq!((e.status.as_u16(), e.code), (503, "too-busy"));
        hold.send(()).unwrap();
        assert_eq!(held.await.unwrap().unwrap(), 1);
        assert_eq!(pools.read(|| Ok(4)).await.unwrap(), 4);
    }
}
