//! The IFP job platform: embedded PostgreSQL, the job queue, workers and the REST API.

pub mod device;
pub mod error;
pub mod events;
pub mod extract;
pub mod model;
pub mod pg;
pub mod platform;
pub mod queue;
pub mod record;
pub mod routes;
pub mod state;
pub mod tokens;
pub mod worker;

pub use error::{Error, Result};
pub use routes::app;
pub use state::AppState;
