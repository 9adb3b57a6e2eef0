//! What the web pages show, computed on the server so a page works without JavaScript: SVG
//! charts and sparklines, human-readable numbers, sizes and times, and configs as they apply.

pub mod chart;
pub mod config;
pub mod fmt;
