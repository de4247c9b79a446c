//! The driver: the follower's state machine.
//!
//! ```text
//!            ┌──────────── retry (backoff) ◀──────────── any error ───────┐
//!            ▼                                                            │
//!   connect + Head ──(no position, marker, or compacted)──▶ bootstrapping ─┤
//!            │                                                  │         │
//!            └──────────────────(position ok)──▶ tailing ◀──────┘         │
//!                                                   │ OUT_OF_RANGE        │
//!                                                   └──▶ bootstrapping ───┘
//!   a foreign or rewound source ──▶ failed (nothing applied; re-checked at the longest backoff)
//! ```
//!
//! A session is one connection: connect, read the source head (and refuse a source that is not
//! this mirror's), start the head poller, bootstrap if needed, then tail until something fails.
//! The error decides the next state ([`Recovery`]). Nothing local is touched between sessions, so
//! the mirror keeps serving reads at its applied revision throughout an outage.

use std::sync::Arc;
use std::time::Duration;

use mirrorfs_api::Revision;
use rand::Rng;

use super::Shared;
use super::error::{FollowError, Recovery};
use super::position::Position;
use super::source::{Source, check_cluster, poll_heads, saw_head};
use super::status::State;
use super::tail::AbortOnDrop;
use super::{bootstrap, tail};
use crate::engine::CommitTime;

/// Capped exponential backoff with jitter.
#[derive(Clone, Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            next: min,
        }
    }

    /// The next delay: the current step with jitter (between half and all of it); the step
    /// doubles up to the maximum.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.next;
        self.next = (step * 2).min(self.max);
        jitter(step)
    }

    /// The longest delay, with jitter.
    pub fn longest(&self) -> Duration {
        jitter(self.max)
    }

    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

fn jitter(d: Duration) -> Duration {
    let half = d / 2;
    let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
    half + Duration::from_nanos(rand::rng().random_range(0..=nanos))
}

pub struct Driver {
    shared: Arc<Shared>,
    pos: Position,
    /// Set when the source said the mirror's position was compacted away.
    rebootstrap: Option<String>,
}

impl Driver {
    pub fn new(shared: Arc<Shared>, pos: Position) -> Self {
        Self {
            shared,
            pos,
            rebootstrap: None,
        }
    }

    /// Follows the source until dropped.
    pub async fn run(mut self) {
        let cfg = &self.shared.config;
        let mut backoff = Backoff::new(cfg.backoff_min, cfg.backoff_max);
        // The same kind of failure again (an outage) is logged at warn once, then every tenth
        // time.
        let mut repeats: (Option<std::mem::Discriminant<FollowError>>, u64) = (None, 0);
        loop {
            let before = (
                self.pos.applied_revision(),
                self.shared.status().bootstraps(),
            );
            let err = self.session().await;
            self.reload().await;
            let progressed = (
                self.pos.applied_revision(),
                self.shared.status().bootstraps(),
            ) != before;
            if progressed {
                backoff.reset();
            }
            let recovery = err.recovery();
            let delay = match recovery {
                Recovery::Retry | Recovery::Bootstrap => backoff.next_delay(),
                Recovery::Refuse => backoff.longest(),
            };
            let kind = Some(std::mem::discriminant(&err));
            if progressed || repeats.0 != kind {
                repeats = (kind, 0);
            }
            repeats.1 += 1;
            let loud = repeats.1 % 10 == 1;
            let now = CommitTime::now();
            {
                let mut st = self.shared.status();
                if err.unreachable() {
                    st.set_unreachable(now);
                }
                st.set_error(err.to_string());
                st.state = match recovery {
                    Recovery::Refuse => State::Failed,
                    Recovery::Retry | Recovery::Bootstrap => State::Retrying,
                };
                st.forget_unapplied();
                st.publish(&self.shared.metrics, now);
            }
            match recovery {
                Recovery::Retry if loud => {
                    tracing::warn!(error = %err, retry_in = ?delay, attempts = repeats.1, "mirror follower: retrying");
                }
                Recovery::Retry => {
                    tracing::debug!(error = %err, retry_in = ?delay, attempts = repeats.1, "mirror follower: retrying");
                }
                Recovery::Bootstrap => {
                    tracing::info!(error = %err, "mirror follower: the changelog no longer reaches back to the applied revision; re-bootstrapping");
                    self.rebootstrap = Some(format!(
                        "the source compacted its changelog past the applied revision {}",
                        self.pos.applied_revision()
                    ));
                }
                Recovery::Refuse if loud => {
                    tracing::error!(error = %err, retry_in = ?delay, "mirror follower: refusing the source; nothing is applied");
                }
                Recovery::Refuse => {
                    tracing::debug!(error = %err, retry_in = ?delay, "mirror follower: still refusing the source");
                }
            }
            tokio::time::sleep(delay).await;
        }
    }

    /// Re-reads the position from the engine (the only truth), and republishes it if a commit
    /// whose answer was lost landed after all.
    async fn reload(&mut self) {
        match Position::read(self.shared.engine.as_ref()).await {
            Ok(pos) => self.pos = pos,
            Err(e) => {
                tracing::warn!(error = %e, "mirror follower: cannot re-read the mirror position");
                return;
            }
        }
        let revision = self.pos.applied_revision();
        let mut st = self.shared.status();
        st.rewriting = self.pos.marker.is_some();
        if st.applied() != revision {
            st.set_applied(revision, self.pos.applied_time());
            self.shared.applied.send_replace(revision);
        }
    }

    /// One connection to the source; returns why it ended.
    async fn session(&mut self) -> FollowError {
        let shared = self.shared.clone();
        let cfg = &shared.config;
        let source = match Source::connect(&cfg.source_url, &cfg.token, cfg.connect_timeout).await {
            Ok(s) => s,
            Err(e) => return e,
        };
        let head = match source.head().await {
            Ok(h) => h,
            Err(e) => return e,
        };
        if let Err(e) = check_cluster(&source.url, self.pos.source_cluster(), &head.cluster_id) {
            return e;
        }
        let applied = self.pos.applied_revision();
        if self.pos.applied.is_some() && Revision(head.revision) < applied {
            return FollowError::SourceBehind {
                url: source.url.clone(),
                cluster: head.cluster_id,
                head: Revision(head.revision),
                applied,
            };
        }
        saw_head(&shared, &head);
        {
            let mut st = shared.status();
            st.clear_error();
            if st.source_cluster_id.is_empty() {
                st.source_cluster_id.clone_from(&head.cluster_id);
            }
        }
        shared.publish_metrics();

        let mut poller = AbortOnDrop(tokio::spawn(poll_heads(
            source.clone(),
            shared.clone(),
            head.cluster_id.clone(),
        )));
        let compacted = Revision(head.compacted_revision);
        let work = async {
            let reason = self.rebootstrap.clone().or_else(|| {
                self.pos.bootstrap_reason().map(str::to_owned).or_else(|| {
                    (applied < compacted).then(|| {
                        format!(
                            "the source compacted its changelog past the applied revision {applied}"
                        )
                    })
                })
            });
            if let Some(reason) = reason {
                shared.status().state = State::Bootstrapping;
                if let Err(e) = bootstrap::run(&shared, &source, &mut self.pos, &reason).await {
                    return e;
                }
                self.rebootstrap = None;
            }
            shared.status().state = State::Tailing;
            tail::run(&shared, &source, &mut self.pos).await
        };
        tokio::select! {
            e = work => e,
            r = &mut poller.0 => r.unwrap_or_else(|e| FollowError::Source {
                url: source.url.clone(),
                message: format!("the head poller failed: {e}"),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(1));
        let mut b = Backoff::new(min, max);
        let steps: Vec<Duration> = (0..8).map(|_| b.next_delay()).collect();
        for (i, d) in steps.iter().enumerate() {
            let step = (min * 2u32.pow(i as u32)).min(max);
            assert!(*d >= step / 2 && *d <= step, "{i}: {d:?} for step {step:?}");
        }
        assert!(b.longest() <= max && b.longest() >= max / 2);
        b.reset();
        assert!(b.next_delay() <= min);
    }
}
