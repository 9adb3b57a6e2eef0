//! The platform's integration tests, one binary: linking candle and sqlx once instead of once per
//! file, and starting one real PostgreSQL (shared, a fresh database per test) for all of them.
//! Each module is one area: the REST API, the pages (and their forms and sessions), the browser,
//! the CLI, the queue protocol, workers, `ifp serve` and its listener limits, comparisons (and
//! the models they keep) and fine-tuning, the embedded PostgreSQL, Uformer jobs.

// Helpers here are not `#[test]` functions, but a panic is how a test reports failure.
#![allow(dead_code, clippy::unwrap_used)]

mod common;

mod api;
mod api_results;
mod api_support;
mod browser;
mod browser_tracking;
mod cli;
mod compare;
mod compare_models;
mod compare_resume;
mod compare_support;
mod listen;
mod pages;
mod pages_forms;
mod pages_sessions;
mod pg;
mod queue;
mod serve;
mod site;
mod uformer;
mod usage;
mod webhook;
mod worker;
mod worker_process;
