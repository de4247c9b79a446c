//! Per-volume operation locks: one call per volume at a time; a concurrent call (a CO that lost
//! track after a restart) gets ABORTED and retries, as the spec allows.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use crate::error::{CsiError, Result};

#[derive(Clone, Default)]
pub struct Locks(Arc<Mutex<HashSet<String>>>);

/// Held while a call works on a volume; released on drop (also on panic or cancellation).
pub struct Guard {
    set: Arc<Mutex<HashSet<String>>>,
    key: String,
}

impl Locks {
    /// Takes the lock of `key` or fails with `VolumeBusy` at once.
    pub fn try_lock(&self, key: &str) -> Result<Guard> {
        let mut set = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if !set.insert(key.to_owned()) {
            return Err(CsiError::VolumeBusy {
                volume_id: key.to_owned(),
            });
        }
        Ok(Guard {
            set: self.0.clone(),
            key: key.to_owned(),
        })
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_is_refused_until_release() {
        let l = Locks::default();
        let g = l.try_lock("v1");
        assert!(g.is_ok());
        assert!(matches!(l.try_lock("v1"), Err(CsiError::VolumeBusy { .. })));
        assert!(l.try_lock("v2").is_ok());
        drop(g);
        assert!(l.try_lock("v1").is_ok());
    }
}
