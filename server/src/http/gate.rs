//! The gate in front of the expensive endpoints (submissions, which parse and check configs;
//! uploads, which decode images; the new-job form and its preview, which render training
//! examples). A burst of them waits briefly for a place and is then refused with 503 and
//! `Retry-After`, instead of running all at once until memory runs out; cheap requests
//! (`/healthz`, lists, job pages, downloads) never wait on it.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::Error;

/// A shared limit on expensive requests in flight.
#[derive(Clone, Debug)]
pub struct Gate {
    permits: Arc<Semaphore>,
    /// How long a request waits for a place before it is refused.
    wait: Duration,
}

impl Gate {
    pub fn new(places: usize, wait: Duration) -> Self {
        Gate {
            permits: Arc::new(Semaphore::new(places.max(1))),
            wait,
        }
    }

    /// Takes a place if one is free (held until the permit is dropped): how tests fill the
    /// gate without timing a slow request.
    pub fn try_enter(&self) -> Option<OwnedSemaphorePermit> {
        self.permits.clone().try_acquire_owned().ok()
    }
}

impl Default for Gate {
    /// Two places per core: rendering and decoding are CPU-bound, and each holds at most one
    /// bounded image; a few seconds of queueing absorbs a double click or a small script.
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Gate::new(2 * cores, Duration::from_secs(5))
    }
}

/// Middleware: runs the request once it has a place, or answers 503 `busy` with
/// `Retry-After`.
pub async fn admit(State(gate): State<Gate>, req: Request, next: Next) -> Response {
    let permit = tokio::time::timeout(gate.wait, gate.permits.clone().acquire_owned()).await;
    match permit {
        Ok(Ok(permit)) => {
            let resp = next.run(req).await;
            drop(permit);
            resp
        }
        _ => axum::response::IntoResponse::into_response(Error::Busy {
            retry_after_secs: gate.wait.as_secs().max(1),
        }),
    }
}
