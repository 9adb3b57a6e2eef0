//! The IFP job platform: embedded PostgreSQL, the job queue, workers, the REST API and the web
//! pages.

pub mod compare_job;
pub mod datasets;
pub mod device;
pub mod error;
pub mod events;
pub mod extract;
pub mod finetune_job;
pub mod model;
pub mod pg;
pub mod platform;
pub mod queue;
pub mod record;
pub mod routes;
pub mod session;
pub mod state;
pub mod tokens;
pub mod uploads;
pub mod views;
pub mod worker;

pub use error::{Error, Result};
pub use routes::app;
pub use state::AppState;
