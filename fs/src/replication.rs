//! The replication workers a mirror mount runs by default: they lease the mirror volume's copy
//! tasks from the mirror cluster and copy blocks from the source bucket into the mirror
//! region's bucket, so the mount's reads soon stop falling back to the source region.

use std::sync::Arc;

use mirrorfs_api::client::Authed;
use mirrorfs_api::meta::replication_client::ReplicationClient;
use mirrorfs_objstore::Credentials;
use mirrorfs_replicator::worker::{Worker, WorkerConfig, WorkerStats};
use tokio::sync::watch;

/// Running workers; stopped (copies in flight finished) by [`Workers::stop`] or on drop.
pub struct Workers {
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
    stats: Arc<WorkerStats>,
}

/// How a mount's workers run.
#[derive(Clone, Debug)]
pub struct WorkersConfig {
    /// The mirror volume (its token authenticates `client`).
    pub volume: String,
    pub name: String,
    pub concurrency: usize,
    pub source_credentials: Option<Credentials>,
    pub mirror_credentials: Option<Credentials>,
}

impl Workers {
    /// Starts workers for `config.volume`'s tasks over `client` (authenticated with the mirror
    /// volume's token). A refusal by the meta service is logged; the mount keeps working
    /// (reads still fall back to the source bucket).
    pub fn start(client: ReplicationClient<Authed>, config: WorkersConfig) -> Workers {
        let mut wc = WorkerConfig::new(config.name);
        wc.volume = Some(config.volume.clone());
        wc.concurrency = config.concurrency.max(1);
        wc.source_credentials = config.source_credentials;
        wc.mirror_credentials = config.mirror_credentials;
        let worker = Worker::new(client, wc);
        let stats = worker.stats();
        let (stop, rx) = watch::channel(false);
        let volume = config.volume;
        let task = tokio::spawn(async move {
            if let Err(e) = worker.run(rx).await {
                tracing::warn!(volume = %volume, error = %e, "replication workers stopped; reads keep falling back to the source bucket");
            }
        });
        Workers {
            stop,
            task: Some(task),
            stats,
        }
    }

    pub fn stats(&self) -> &Arc<WorkerStats> {
        &self.stats
    }

    /// Stops taking tasks and waits for the copies in flight.
    pub async fn stop(mut self) {
        self.stop.send_replace(true);
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}
