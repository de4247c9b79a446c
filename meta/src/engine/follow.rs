//! Turns a stored changelog plus a "latest revision" signal into a [`ChangeStream`]: catch up
//! from the log in batches, then wait for the next commit. Shared by engines that keep their own
//! changelog (embedded, memory).

use std::future::Future;

use mirrorfs_api::Revision;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use super::{ChangeEntry, ChangeStream, Result};

/// Entries read per batch while catching up.
const BATCH: usize = 512;

/// Streams every entry with revision `>= from`. `read(next, max)` returns up to `max` entries
/// starting at `next` (or [`EngineError::Compacted`](super::EngineError::Compacted)); `head`
/// carries the latest committed revision and closes when the engine shuts down.
pub(crate) fn follow<R, F>(
    from: Revision,
    mut head: watch::Receiver<Revision>,
    read: R,
) -> ChangeStream
where
    R: Fn(Revision, usize) -> F + Send + 'static,
    F: Future<Output = Result<Vec<ChangeEntry>>> + Send,
{
    let (tx, rx) = mpsc::channel::<Result<ChangeEntry>>(BATCH);
    tokio::spawn(async move {
        let mut next = Revision(from.0.max(1));
        loop {
            let latest = *head.borrow_and_update();
            while next <= latest {
                let batch = match read(next, BATCH).await {
                    Ok(batch) => batch,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                if batch.is_empty() {
                    break;
                }
                for entry in batch {
                    next = entry.revision.next();
                    if tx.send(Ok(entry)).await.is_err() {
                        return;
                    }
                }
            }
            tokio::select! {
                changed = head.changed() => if changed.is_err() { return },
                () = tx.closed() => return,
            }
        }
    });
    Box::pin(ReceiverStream::new(rx))
}
