//! Per-volume operation locks: one call per volume at a time; a concurrent call (a CO that lost
//! track after a restart) gets ABORTED and retries, as the spec allows. The repair of staged
//! volumes after a restart holds the same locks, but a call arriving meanwhile waits for the
//! repair instead of failing: kubelet must not see errors because the plugin restarted.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::error::{CsiError, Result};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Holder {
    Call,
    Repair,
}

#[derive(Default)]
struct Inner {
    held: Mutex<HashMap<String, Holder>>,
    released: Notify,
}

#[derive(Clone, Default)]
pub struct Locks(Arc<Inner>);

/// Held while a call works on a volume; released on drop (also on panic or cancellation).
pub struct Guard {
    inner: Arc<Inner>,
    key: String,
}

impl Locks {
    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<String, Holder>> {
        self.0.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn guard(&self, key: &str) -> Guard {
        Guard {
            inner: self.0.clone(),
            key: key.to_owned(),
        }
    }

    /// Takes the lock of `key` for a call: fails with `VolumeBusy` at once if another call
    /// holds it; waits if the post-restart repair holds it.
    pub async fn lock(&self, key: &str) -> Result<Guard> {
        loop {
            let released = {
                let mut held = self.held();
                match held.get(key) {
                    None => {
                        held.insert(key.to_owned(), Holder::Call);
                        return Ok(self.guard(key));
                    }
                    Some(Holder::Call) => {
                        return Err(CsiError::VolumeBusy {
                            volume_id: key.to_owned(),
                        });
                    }
                    // Registered before the map is unlocked, so no release is missed.
                    Some(Holder::Repair) => self.0.released.notified(),
                }
            };
            released.await;
        }
    }

    /// Takes the lock of `key` for the repair, unless a call holds it.
    pub fn try_lock_repair(&self, key: &str) -> Option<Guard> {
        let mut held = self.held();
        if held.contains_key(key) {
            return None;
        }
        held.insert(key.to_owned(), Holder::Repair);
        Some(self.guard(key))
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.inner
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.key);
        self.inner.released.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn second_call_is_refused_until_release() {
        let l = Locks::default();
        let g = l.lock("v1").await;
        assert!(g.is_ok());
        assert!(matches!(
            l.lock("v1").await,
            Err(CsiError::VolumeBusy { .. })
        ));
        assert!(l.lock("v2").await.is_ok());
        assert!(l.try_lock_repair("v1").is_none());
        drop(g);
        assert!(l.lock("v1").await.is_ok());
    }

    #[tokio::test]
    async fn a_call_waits_for_the_repair() {
        let l = Locks::default();
        let repair = l.try_lock_repair("v1");
        assert!(repair.is_some());
        let l2 = l.clone();
        let call = tokio::spawn(async move { l2.lock("v1").await.map(|_| ()) });
        // The call is still waiting while the repair holds the lock.
        let waited = tokio::time::timeout(Duration::from_millis(50), async {
            while !call.is_finished() {
                tokio::task::yield_now().await;
            }
        })
        .await;
        assert!(waited.is_err(), "the call did not wait for the repair");
        drop(repair);
        let r = call.await.map_err(|e| e.to_string());
        assert!(matches!(r, Ok(Ok(()))), "{r:?}");
    }
}
