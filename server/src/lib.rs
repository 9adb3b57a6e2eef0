//! The IFP job platform: embedded PostgreSQL, the job queue, workers, the REST API and the web
//! pages. The folders are the layers: `http` (routes, pages, sessions) calls `jobs` (the typed
//! job kinds and the job service), which calls `queue` and `db`; `worker` claims from the queue
//! and runs a job's spec through the trainer.

pub mod db;
pub mod error;
pub mod http;
pub mod jobs;
pub mod platform;
pub mod queue;
pub mod tokens;
pub mod webhook;
pub mod worker;

pub use error::{Error, Result};
pub use http::routes::app;
pub use http::state::AppState;
