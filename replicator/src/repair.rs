//! Sends the repairs a mirror-region reader asks for (a block missing or bad in the mirror
//! bucket) to the mirror cluster's replication queue, where they go first.

use async_trait::async_trait;
use mirrorfs_api::client::Authed;
use mirrorfs_api::meta::{RepairRequest, VolumeRef, replication_client::ReplicationClient};
use mirrorfs_objstore::{BlockInfo, RepairReason, RepairSink};

/// The repair sink of one mirror volume, authenticated with that volume's token.
#[derive(Clone)]
pub struct QueueRepairs {
    client: ReplicationClient<Authed>,
    /// The mirror volume's name (its token opens it).
    volume: String,
    /// The source volume id its blocks belong to (`OpenVolumeReply.volume_id`).
    volume_id: u64,
}

impl QueueRepairs {
    pub fn new(
        client: ReplicationClient<Authed>,
        volume: impl Into<String>,
        volume_id: u64,
    ) -> Self {
        Self {
            client,
            volume: volume.into(),
            volume_id,
        }
    }
}

#[async_trait]
impl RepairSink for QueueRepairs {
    async fn repair(&self, block: &BlockInfo, reason: RepairReason) {
        let req = RepairRequest {
            volume: Some(VolumeRef {
                volume: self.volume.clone(),
            }),
            volume_id: self.volume_id,
            block_id: block.id.as_str().to_owned(),
            block_size: block.size,
            checksum: block.checksum.0.to_vec(),
            reason: reason.as_str().to_owned(),
        };
        if let Err(e) = self.client.clone().repair(req).await {
            tracing::warn!(block = %block.id, volume = %self.volume, error = %e.message(), "cannot queue a repair; the block is copied by the next full sync instead");
        }
    }
}
