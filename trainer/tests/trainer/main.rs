//! The trainer's integration tests, one binary (candle links once): parity with the PyTorch
//! golden vectors (`restormer_golden`, `uformer_golden`, `loss_golden`, `data_golden`,
//! `optim_torch`, `eval_metrics`), the fused kernels against their composed versions (`kernels`,
//! `fallback`, `amp`), the CUDA kernels that wait for a GPU run, emulated on the CPU
//! (`cuda_emul`), configs (`config_files`), and training and fine-tuning end to end
//! (`train_loop`, `finetune`, `finetune_uformer`). `IFP_TEST_DEVICE=cuda` runs the parity modules on a GPU.

// Helpers here are not `#[test]` functions, but a panic is how a test reports failure.
#![allow(dead_code, clippy::unwrap_used)]

mod common;

mod amp;
mod config_files;
mod cuda_emul;
mod data_golden;
mod eval_metrics;
mod fallback;
mod finetune;
mod finetune_uformer;
mod kernels;
mod loss_golden;
mod memory;
mod optim_torch;
mod restormer_golden;
mod train_loop;
mod uformer_golden;
