//! The connection to the source: its `Changelog` client, the `Head` poller that keeps lag
//! current and notices an outage while the changelog is quiet, and the one place where source
//! errors become [`FollowError`]s.

use std::sync::Arc;
use std::time::Duration;

use mirrorfs_api::Revision;
use mirrorfs_api::meta::{self as pb, changelog_client::ChangelogClient};
use tonic::{Code, Status};

use super::Shared;
use super::error::FollowError;
use super::position::to_commit_time;
use crate::client::{self, Authed, ClientError};
use crate::engine::CommitTime;
use crate::error::compacted_revision;

/// How often the source head is polled while connected.
pub const HEAD_INTERVAL: Duration = Duration::from_secs(1);

/// A connected source.
#[derive(Clone)]
pub struct Source {
    pub url: String,
    pub client: ChangelogClient<Authed>,
    timeout: Duration,
}

impl Source {
    pub async fn connect(url: &str, token: &str, timeout: Duration) -> Result<Self, FollowError> {
        let channel = client::connect(url, timeout)
            .await
            .map_err(|e| client_error(url, e))?;
        let client = client::changelog(channel, token).map_err(|e| client_error(url, e))?;
        Ok(Self {
            url: url.to_owned(),
            client,
            timeout,
        })
    }

    /// The source's head, failing within the connect timeout.
    pub async fn head(&self) -> Result<pb::HeadReply, FollowError> {
        let mut c = self.client.clone();
        match tokio::time::timeout(self.timeout, c.head(pb::HeadRequest {})).await {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(s)) => Err(classify(&self.url, &s, Revision(0))),
            Err(_) => Err(FollowError::Unreachable {
                url: self.url.clone(),
                reason: format!("no answer to Head within {:?}", self.timeout),
            }),
        }
    }
}

fn client_error(url: &str, e: ClientError) -> FollowError {
    match e {
        ClientError::Unreachable { reason, .. } => FollowError::Unreachable {
            url: url.to_owned(),
            reason,
        },
        ClientError::BadToken => FollowError::Refused {
            url: url.to_owned(),
            message: e.to_string(),
        },
        ClientError::BadUrl { .. } => FollowError::Source {
            url: url.to_owned(),
            message: e.to_string(),
        },
    }
}

/// What a failed source call means for the follower. `requested` is the changelog position
/// asked for (for OUT_OF_RANGE).
pub fn classify(url: &str, s: &Status, requested: Revision) -> FollowError {
    let url = url.to_owned();
    match s.code() {
        Code::Unauthenticated | Code::PermissionDenied => FollowError::Refused {
            url,
            message: s.message().to_owned(),
        },
        Code::OutOfRange => match compacted_revision(s) {
            Some(compacted) => FollowError::Compacted {
                requested,
                compacted,
            },
            None => FollowError::Source {
                url,
                message: s.message().to_owned(),
            },
        },
        // Transport failures (refused connections, resets, a stream cut by a restart) surface
        // as these codes.
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
            FollowError::Unreachable {
                url,
                reason: s.message().to_owned(),
            }
        }
        _ => FollowError::Source {
            url,
            message: format!("{}: {}", s.code(), s.message()),
        },
    }
}

/// Refuses a source whose cluster id is not the one this mirror has copied from.
pub fn check_cluster(url: &str, expected: Option<&str>, found: &str) -> Result<(), FollowError> {
    match expected {
        Some(expected) if expected != found => Err(FollowError::ForeignSource {
            url: url.to_owned(),
            expected: expected.to_owned(),
            found: found.to_owned(),
        }),
        _ => Ok(()),
    }
}

/// Records a source head in the status.
pub fn saw_head(shared: &Shared, head: &pb::HeadReply) {
    let mut st = shared.status();
    st.set_reachable();
    st.saw_revision(
        Revision(head.revision),
        to_commit_time(head.committed.as_ref()),
    );
}

/// Polls the source head every [`HEAD_INTERVAL`] until a poll fails; returns why.
pub async fn poll_heads(source: Source, shared: Arc<Shared>, cluster: String) -> FollowError {
    let mut tick = tokio::time::interval(HEAD_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let head = match source.head().await {
            Ok(h) => h,
            Err(e) => return e,
        };
        if let Err(e) = check_cluster(&source.url, Some(&cluster), &head.cluster_id) {
            return e;
        }
        saw_head(&shared, &head);
        shared.status().publish(&shared.metrics, CommitTime::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::EngineError;
    use crate::error::MetaError;

    #[test]
    fn source_errors_are_classified_by_what_to_do() {
        use super::super::error::Recovery;
        let compacted = Status::from(MetaError::Engine(EngineError::Compacted {
            requested: Revision(3),
            compacted: Revision(9),
        }));
        let e = classify("u", &compacted, Revision(3));
        assert!(matches!(
            e,
            FollowError::Compacted {
                compacted: Revision(9),
                ..
            }
        ));
        assert_eq!(e.recovery(), Recovery::Bootstrap);
        let refused = classify("u", &Status::unauthenticated("bad token"), Revision(0));
        assert!(
            refused
                .to_string()
                .contains("refused the replication credential")
        );
        assert_eq!(refused.recovery(), Recovery::Retry);
        assert!(classify("u", &Status::unavailable("down"), Revision(0)).unreachable());
        let foreign = check_cluster("u", Some("aaa"), "bbb").unwrap_err();
        assert_eq!(foreign.recovery(), Recovery::Refuse);
        assert!(foreign.to_string().contains("aaa") && foreign.to_string().contains("bbb"));
        assert!(check_cluster("u", None, "bbb").is_ok());
    }
}
