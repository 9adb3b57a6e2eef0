//! The IFP trainer: Image-free Pre-training (Wang et al., "Image-free Pre-training for Low-level
//! Vision", ACM MM 2024) for image-restoration networks, in candle. Config, noise data, spectrum
//! masks, corruption, networks, losses, optimiser, checkpoints and the training loop; no web or
//! database code.

pub mod batch;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod driver;
pub mod error;
pub mod eval;
pub mod finetune;
pub mod infer;
pub mod kernels;
pub mod loss;
pub mod memory;
pub mod models;
pub mod optim;
pub mod preview;
pub mod threads;
pub mod train;

pub use config::Config;
pub use error::{Result, TrainerError};
pub use train::{train, Control, Event, Progress, TrainOptions, TrainSummary, Trainer};
