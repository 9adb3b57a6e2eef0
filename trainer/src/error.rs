//! The trainer's error type: every failure a caller can act on, with the value or path at fault.

use std::path::PathBuf;

use crate::config::ConfigError;
use crate::data::DataError;

#[derive(Debug, thiserror::Error)]
pub enum TrainerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Weights { path: PathBuf, message: String },
    #[error("{0}")]
    Unsupported(String),
    #[error("training diverged at step {step}: {what} is not finite")]
    NonFinite { step: usize, what: String },
    #[error("{0}")]
    Resume(String),
}

impl TrainerError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> TrainerError {
        let path = path.into();
        move |source| TrainerError::Io { path, source }
    }
}

pub type Result<T, E = TrainerError> = std::result::Result<T, E>;
