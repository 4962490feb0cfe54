//! Waiting for a condition with a deadline: the only way tests synchronise with the cluster.

use std::future::Future;
use std::time::Duration;

use anyhow::anyhow;
use tokio::time::Instant;

/// Interval between two attempts of [`poll_until`].
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// An attempt is cut off at the deadline, but never given less than this.
const MIN_ATTEMPT: Duration = Duration::from_secs(2);

/// Calls `f` until it returns `Ok(Some(value))` and returns that value. `Ok(None)` ("not yet") and
/// `Err(_)` (e.g. the apiserver is restarting) both mean: try again in [`POLL_INTERVAL`].
/// After `deadline` the result is an error naming `what` and carrying the last error, if any.
/// The last attempt runs at the deadline; an attempt that hangs is cut off then (given at least
/// 2 s).
///
/// ```ignore
/// let pvc = poll_until("claim to be Bound", Duration::from_secs(30), || async {
///     let pvc = claims.get(name).await?;
///     Ok(is_bound(&pvc).then_some(pvc))
/// }).await?;
/// ```
pub async fn poll_until<T, F, Fut>(what: &str, deadline: Duration, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let start = Instant::now();
    let end = start + deadline;
    let mut attempts = 0u64;
    loop {
        attempts += 1;
        // The last attempt starts at the deadline; give it a moment to answer.
        let attempt_end = end.max(Instant::now() + MIN_ATTEMPT);
        let last_error = match tokio::time::timeout_at(attempt_end, f()).await {
            Ok(Ok(Some(value))) => return Ok(value),
            Ok(Ok(None)) => None,
            Ok(Err(e)) => Some(e),
            Err(_elapsed) => Some(anyhow!("the last attempt did not finish in time")),
        };
        let now = Instant::now();
        if now >= end {
            let waited = now - start;
            return Err(match last_error {
                Some(e) => anyhow!(
                    "timed out after {waited:.1?} ({attempts} attempts) waiting for {what}; last error: {e:#}"
                ),
                None => anyhow!(
                    "timed out after {waited:.1?} ({attempts} attempts) waiting for {what} \
                     (the condition never held)"
                ),
            });
        }
        tokio::time::sleep_until((now + POLL_INTERVAL).min(end)).await;
    }
}
