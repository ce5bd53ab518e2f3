//! Riding out a store that cannot take writes for a while (a full disk, a database that is busy or
//! unreachable): what a build must record is retried until the store is back.

use std::time::Duration;

use tokio::sync::watch;

use crate::scheduler::Stop;
use crate::store::store_condition;

/// First wait before retrying a write the store could not take ([`until_stored`]).
const STORE_RETRY_FIRST: Duration = Duration::from_millis(100);
/// Longest wait between two such retries.
const STORE_RETRY_MAX: Duration = Duration::from_secs(5);

/// Gives up retrying only when Kiln shuts down.
pub(super) fn on_shutdown(why: Stop) -> bool {
    why == Stop::Shutdown
}

/// Gives up retrying as soon as the build is stopped in any way.
pub(super) fn on_any_stop(why: Stop) -> bool {
    why != Stop::No
}

/// Runs the store operation `op` until it succeeds, fails for a reason other than a
/// [`crate::store::StoreCondition`] (which passes: a full disk, a database that is busy or unreachable), or
/// `stop` holds a value that `gives_up` accepts. Waits [`STORE_RETRY_FIRST`] between tries,
/// doubling up to [`STORE_RETRY_MAX`]. Returns the last error when it stops trying.
pub(super) async fn until_stored<T, Fut>(
    stop: &mut watch::Receiver<Stop>,
    gives_up: fn(Stop) -> bool,
    mut op: impl FnMut() -> Fut,
) -> anyhow::Result<T>
where
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let mut delay = STORE_RETRY_FIRST;
    let mut waited = false;
    loop {
        let e = match op().await {
            Ok(v) => {
                if waited {
                    tracing::info!("the store took the write after it came back");
                }
                return Ok(v);
            }
            Err(e) => e,
        };
        if store_condition(&e).is_none() || gives_up(*stop.borrow()) {
            return Err(e);
        }
        if !waited {
            tracing::warn!(
                error = format!("{e:#}"),
                "the store cannot take a write now; retrying until it can"
            );
            waited = true;
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            changed = stop.changed() => {
                if changed.is_err() {
                    return Err(e);
                }
            }
        }
        delay = (delay * 2).min(STORE_RETRY_MAX);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn full_disk() -> anyhow::Error {
        std::io::Error::from_raw_os_error(libc::ENOSPC).into()
    }

    #[tokio::test(start_paused = true)]
    async fn retries_while_the_disk_is_full_and_stops_on_other_errors_or_shutdown() {
        let (tx, mut rx) = watch::channel(Stop::No);
        let calls = AtomicUsize::new(0);
        let start = tokio::time::Instant::now();
        let stored = until_stored(&mut rx, on_shutdown, || async {
            match calls.fetch_add(1, Ordering::SeqCst) {
                0..=2 => Err(full_disk()),
                _ => Ok(7),
            }
        })
        .await;
        assert_eq!(stored.unwrap(), 7);
        assert_eq!(calls.load(Ordering::SeqCst), 4);
        // 100 + 200 + 400 ms between the tries.
        assert_eq!(start.elapsed(), Duration::from_millis(700));

        // Another error is not retried.
        calls.store(0, Ordering::SeqCst);
        let stored: anyhow::Result<()> = until_stored(&mut rx, on_shutdown, || async {
            calls.fetch_add(1, Ordering::SeqCst);
            anyhow::bail!("a bug")
        })
        .await;
        assert!(stored.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        // A cancel does not end the retries of what must be recorded; a shutdown does.
        tx.send(Stop::Cancel).unwrap();
        let retrying = tokio::spawn(async move {
            until_stored(&mut rx, on_shutdown, || async { Err::<(), _>(full_disk()) }).await
        });
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!retrying.is_finished());
        tx.send(Stop::Shutdown).unwrap();
        assert!(retrying.await.unwrap().is_err());
    }
}
