//! An in-memory mirror for unit tests (and the CSI benchmark): volumes with directories, files
//! and symlinks, a token, a settable lag, and directories that appear after some lookups (a
//! mirror catching up with its source).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{Follow, Kind, Lookup, MirrorView};
use crate::error::{CsiError, Result};
use crate::params::VolumeSpec;

#[derive(Default)]
struct State {
    /// (volume, "a/b") → what is there; directories also implicitly for every prefix.
    entries: HashMap<(String, String), Option<Kind>>,
    /// Entries that appear once `lookups` reaches the count.
    later: Vec<(u64, String, String)>,
    follow: Option<Follow>,
}

pub struct FakeMirror {
    token: String,
    state: Mutex<State>,
    lookups: AtomicU64,
}

impl FakeMirror {
    pub fn new(token: &str) -> Self {
        Self {
            token: token.to_owned(),
            state: Mutex::default(),
            lookups: AtomicU64::new(0),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn add(&self, volume: &str, path: &str, kind: Option<Kind>) {
        let mut st = self.state();
        let parts: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
        for i in 1..parts.len() {
            st.entries
                .insert((volume.to_owned(), parts[..i].join("/")), None);
        }
        st.entries
            .insert((volume.to_owned(), parts.join("/")), kind);
    }

    /// A directory (and its parents).
    pub fn add_dir(&self, volume: &str, path: &str) {
        self.add(volume, path, None);
    }
    pub fn add_file(&self, volume: &str, path: &str) {
        self.add(volume, path, Some(Kind::File));
    }
    pub fn add_symlink(&self, volume: &str, path: &str) {
        self.add(volume, path, Some(Kind::Symlink));
    }
    /// A directory that exists from the `n`-th lookup on (counting from 1).
    pub fn add_dir_after(&self, volume: &str, path: &str, n: u64) {
        self.state()
            .later
            .push((n, volume.to_owned(), path.to_owned()));
    }
    pub fn set_follow(&self, f: Follow) {
        self.state().follow = Some(f);
    }
    pub fn lookups(&self) -> u64 {
        self.lookups.load(Ordering::SeqCst)
    }
    pub fn revision(&self) -> u64 {
        42
    }
}

#[async_trait::async_trait]
impl MirrorView for FakeMirror {
    async fn lookup(&self, spec: &VolumeSpec, token: &str) -> Result<Lookup> {
        if token != self.token {
            return Err(CsiError::Unauthenticated(format!(
                "mirror volume {:?} at {} refused the token",
                spec.volume, spec.meta_address
            )));
        }
        let n = self.lookups.fetch_add(1, Ordering::SeqCst) + 1;
        let due: Vec<(String, String)> = {
            let mut st = self.state();
            let (due, keep): (Vec<_>, Vec<_>) = st.later.drain(..).partition(|(at, _, _)| *at <= n);
            st.later = keep;
            due.into_iter().map(|(_, v, p)| (v, p)).collect()
        };
        for (v, p) in due {
            self.add_dir(&v, &p);
        }
        let st = self.state();
        let mut prefix = String::new();
        for c in spec.subdir.components() {
            let here = if prefix.is_empty() {
                None
            } else {
                st.entries
                    .get(&(spec.volume.clone(), prefix.clone()))
                    .copied()
                    .flatten()
            };
            if let Some(k) = here {
                return Ok(Lookup::Missing {
                    revision: self.revision(),
                    existing_prefix: format!("/{prefix}"),
                    missing_component: c.to_owned(),
                    blocking: Some(k),
                });
            }
            let next = if prefix.is_empty() {
                c.to_owned()
            } else {
                format!("{prefix}/{c}")
            };
            if !st
                .entries
                .contains_key(&(spec.volume.clone(), next.clone()))
            {
                return Ok(Lookup::Missing {
                    revision: self.revision(),
                    existing_prefix: format!("/{prefix}"),
                    missing_component: c.to_owned(),
                    blocking: None,
                });
            }
            prefix = next;
        }
        let kind = if prefix.is_empty() {
            None
        } else {
            st.entries
                .get(&(spec.volume.clone(), prefix))
                .copied()
                .flatten()
        };
        Ok(match kind {
            None => Lookup::Directory {
                revision: self.revision(),
            },
            Some(kind) => Lookup::NotDirectory {
                revision: self.revision(),
                kind,
            },
        })
    }

    async fn follow(&self, _spec: &VolumeSpec, _token: &str) -> Follow {
        self.state()
            .follow
            .clone()
            .unwrap_or(Follow::Unknown("not set".into()))
    }
}
