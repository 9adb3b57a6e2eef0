//! The gate in front of the expensive endpoints (submissions, which parse and check configs;
//! uploads, which decode images; the new-job form and its preview, which render training
//! examples). A burst of them waits briefly for a place and is then refused with 503 and
//! `Retry-After`, instead of running all at once until memory runs out; cheap requests
//! (`/healthz`, lists, job pages, downloads) never wait on it.
//!
//! A place is held only by a signed-in caller, for a bounded time, and one caller holds at
//! most half of the places: the gate reads the whole body itself, under a deadline, before the
//! handler runs, so a client that announces a large body and then sends it slowly (or not at
//! all) gets 408 and frees its place, and the others still get in. Requests without a valid
//! token or session are passed to the handler without a place and without reading their body;
//! the handler refuses them from their headers alone.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::Error;
use crate::http::state::AppState;
use crate::tokens::Caller;

/// A shared limit on expensive requests in flight.
#[derive(Clone, Debug)]
pub struct Gate {
    permits: Arc<Semaphore>,
    /// How long a request waits for a place before it is refused.
    wait: Duration,
    /// How long a request may take to send its body once it has a place.
    deadline: Duration,
    /// The places each caller holds now: at most half of them each.
    shares: Quota,
}

impl Gate {
    pub fn new(places: usize, wait: Duration) -> Self {
        let places = places.max(1);
        Gate {
            permits: Arc::new(Semaphore::new(places)),
            wait,
            deadline: Duration::from_secs(30),
            shares: Quota::new((places / 2).max(1)),
        }
    }

    /// The same gate with another body deadline (tests use a short one).
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// Takes a place if one is free (held until the permit is dropped): how tests fill the
    /// gate without timing a slow request.
    pub fn try_enter(&self) -> Option<OwnedSemaphorePermit> {
        self.permits.clone().try_acquire_owned().ok()
    }

    fn busy(&self) -> Response {
        Error::Busy {
            retry_after_secs: self.wait.as_secs().max(1),
        }
        .into_response()
    }
}

impl Default for Gate {
    /// Two places per core: rendering and decoding are CPU-bound, and each holds at most one
    /// bounded image; a few seconds of queueing absorbs a double click or a small script. A
    /// body has 30 s to arrive: the largest (a 32 MiB upload) at about 1 MB/s.
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Gate::new(2 * cores, Duration::from_secs(5))
    }
}

/// A limit on what each caller holds at once (gate places, event streams), by user name.
#[derive(Clone, Debug)]
pub struct Quota {
    held: Arc<Mutex<HashMap<String, usize>>>,
    limit: usize,
}

impl Quota {
    pub fn new(limit: usize) -> Self {
        Quota {
            held: Arc::default(),
            limit,
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Counts one more for `who`, unless they hold the limit already; the count is given back
    /// when the returned guard is dropped.
    pub fn take(&self, who: &str) -> Option<Share> {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let n = held.entry(who.to_string()).or_default();
        if *n >= self.limit {
            return None;
        }
        *n += 1;
        Some(Share {
            held: self.held.clone(),
            who: who.to_string(),
        })
    }
}

/// One caller's count of one thing under a [`Quota`], given back when dropped.
#[derive(Debug)]
pub struct Share {
    held: Arc<Mutex<HashMap<String, usize>>>,
    who: String,
}

impl Drop for Share {
    fn drop(&mut self) {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = held.get_mut(&self.who) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.who);
            }
        }
    }
}

/// The gate on one route: the application's state (its gate, and what identifies callers) and
/// the most body bytes the route takes.
#[derive(Clone)]
pub struct GateAt {
    state: AppState,
    body_limit: usize,
}

impl GateAt {
    pub fn new(state: &AppState, body_limit: usize) -> Self {
        GateAt {
            state: state.clone(),
            body_limit,
        }
    }
}

/// The signed-in user a request comes from, by bearer token or session cookie; `None` when it
/// has neither valid one.
async fn caller(parts: &mut axum::http::request::Parts, state: &AppState) -> Option<String> {
    if let Ok(c) = Caller::from_request_parts(parts, state).await {
        return Some(c.name);
    }
    match crate::http::extract::browser_session(parts, state).await {
        Ok(Some(s)) => Some(s.caller.name),
        _ => None,
    }
}

/// Middleware: runs the request once it has a place and its whole body (see the module doc),
/// or answers 503 `busy` with `Retry-After`, 408 for a body too slow, 413 for one too large.
pub async fn admit(State(at): State<GateAt>, req: Request, next: Next) -> Response {
    let (mut parts, body) = req.into_parts();
    let Some(who) = caller(&mut parts, &at.state).await else {
        // The handler's own extractors refuse it before reading any body.
        return next.run(Request::from_parts(parts, body)).await;
    };
    let gate = &at.state.gate;
    let Some(share) = gate.shares.take(&who) else {
        return gate.busy();
    };
    let permit = match tokio::time::timeout(gate.wait, gate.permits.clone().acquire_owned()).await {
        Ok(Ok(permit)) => permit,
        _ => return gate.busy(),
    };
    let read = Limited::new(body, at.body_limit).collect();
    let bytes = match tokio::time::timeout(gate.deadline, read).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.is::<LengthLimitError>() => {
            return Error::Status {
                status: StatusCode::PAYLOAD_TOO_LARGE,
                message: format!(
                    "request body too large: at most {} bytes are accepted here",
                    at.body_limit
                ),
            }
            .into_response()
        }
        Ok(Err(e)) => {
            return Error::BadRequest(format!("reading the request body: {e}")).into_response()
        }
        Err(_) => {
            return Error::Status {
                status: StatusCode::REQUEST_TIMEOUT,
                message: format!(
                    "the request body did not arrive within {} s",
                    gate.deadline.as_secs_f32()
                ),
            }
            .into_response()
        }
    };
    let resp = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    drop((permit, share));
    resp
}
