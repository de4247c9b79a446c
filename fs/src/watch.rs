//! The follower of a volume's change stream (`WatchVolume`), which keeps this client's caches
//! coherent with changes made by others: for each committed change it drops the cached
//! attributes, extent maps and entries it names and tells the kernel (through the
//! [`Invalidator`](crate::Invalidator)). A state machine in three states:
//!
//! - **tailing** from `last + 1` (the revision the volume was opened at, then each change
//!   applied);
//! - **reconnecting** with backoff when the stream ends or fails (the service restarted, the
//!   network dropped): changes made meanwhile arrive when it resumes at `last + 1`;
//! - **resync** when the resume point was compacted away or the server says `reset`: every
//!   cache is dropped and the stream restarts from the next commit.

use std::sync::{Arc, Weak};
use std::time::Duration;

use futures::StreamExt;
use mirrorfs_api::meta::VolumeChange;

use crate::core::FsCore;
use crate::handles::lock;
use crate::meta::{MetaClient, WatchError};

const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Runs until the core is dropped (or the task aborted).
pub(crate) async fn follow(core: Weak<FsCore>, meta: Arc<dyn MetaClient>, mut from: u64) {
    let mut backoff = BACKOFF_MIN;
    loop {
        match meta.watch_volume(from).await {
            Ok(mut stream) => {
                backoff = BACKOFF_MIN;
                while let Some(item) = stream.next().await {
                    let Some(core) = core.upgrade() else { return };
                    match item {
                        Ok(change) => {
                            from = change.revision + 1;
                            core.apply_change(&change);
                        }
                        Err(WatchError::Compacted) => {
                            core.resync();
                            from = 0;
                            break;
                        }
                        Err(WatchError::Fs(e)) => {
                            tracing::warn!(volume = %meta.volume(), error = %e, "volume change stream failed; reconnecting");
                            break;
                        }
                    }
                }
            }
            Err(WatchError::Compacted) => {
                let Some(core) = core.upgrade() else { return };
                core.resync();
                from = 0;
                continue;
            }
            Err(WatchError::Fs(e)) => {
                tracing::debug!(volume = %meta.volume(), error = %e, "cannot watch the volume yet");
            }
        }
        if core.strong_count() == 0 {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

impl FsCore {
    /// Applies one change of the stream to the caches.
    pub(crate) fn apply_change(&self, change: &VolumeChange) {
        if change.reset {
            self.resync();
        }
        let tell = !self.is_own_revision(change.revision);
        let inv = self
            .invalidator
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for &ino in &change.inodes {
            if tell {
                self.cache.invalidate_attr(ino);
            } else {
                // This client's own change: what it cached from the reply is at least as new.
                self.cache.invalidate_attr_before(ino, change.revision);
            }
            let st = lock(&self.inodes).get(&ino).cloned();
            if let Some(st) = st {
                lock(&st.file).invalidate_map();
            }
            if tell && let Some(inv) = &inv {
                inv.inode(ino);
            }
        }
        for e in &change.entries {
            self.cache.invalidate_entry(e.parent, &e.name);
            if tell && let Some(inv) = &inv {
                inv.entry(e.parent, &e.name);
            }
        }
        self.watched.send_replace(change.revision);
    }

    /// Drops every cache (the stream had a gap or the volume was reset).
    pub(crate) fn resync(&self) {
        tracing::info!(volume = %self.config.volume, "volume caches dropped (change stream resynchronised)");
        let inos = self.cache.cached_inodes();
        self.cache.clear();
        let states: Vec<_> = lock(&self.inodes).values().cloned().collect();
        for st in states {
            lock(&st.file).invalidate_map();
        }
        let inv = self
            .invalidator
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(inv) = inv {
            for ino in inos {
                inv.inode(ino);
            }
        }
    }
}
