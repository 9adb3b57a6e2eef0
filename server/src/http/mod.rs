//! Everything that speaks HTTP: the listener and its limits, the gate in front of expensive
//! endpoints, the API and page routes, request extractors, browser sessions,
//! the state handlers share, the event hub that feeds live pages, and the views
//! (charts, number formats) the pages render.

pub mod extract;
pub mod gate;
pub mod hub;
pub mod latency;
pub mod listen;
pub mod routes;
pub mod session;
pub mod state;
pub mod views;
