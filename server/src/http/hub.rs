//! The event hub: one `LISTEN` connection per server process turns the queue's `NOTIFY`s into
//! an in-process broadcast of changed job ids, which the SSE streams of `routes::events` follow.

use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::{broadcast, watch};
use uuid::Uuid;

use crate::queue;

/// How long the hub waits before reconnecting.
const RETRY: Duration = Duration::from_secs(2);

/// Forwards job-change notifications to `tx` until shutdown.
pub fn spawn_hub(
    pool: PgPool,
    tx: broadcast::Sender<Uuid>,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut listener: Option<PgListener> = None;
        while !*shutdown.borrow() {
            let l = match listener.as_mut() {
                Some(l) => l,
                None => match PgListener::connect_with(&pool).await {
                    Ok(mut l) => {
                        if let Err(e) = l
                            .listen_all([queue::CHANNEL_EVENT, queue::CHANNEL_CANCEL])
                            .await
                        {
                            tracing::warn!(error = %e, "event hub: LISTEN failed");
                            tokio::time::sleep(RETRY).await;
                            continue;
                        }
                        listener.insert(l)
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "event hub: cannot connect");
                        tokio::time::sleep(RETRY).await;
                        continue;
                    }
                },
            };
            tokio::select! {
                n = l.recv() => match n {
                    Ok(n) => {
                        if let Ok(id) = n.payload().parse() {
                            // No subscribers is not an error.
                            let _ = tx.send(id);
                        }
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "event hub: connection lost");
                        tokio::time::sleep(RETRY).await;
                    }
                },
                _ = shutdown.changed() => {}
            }
        }
    })
}
