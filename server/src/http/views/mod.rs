//! What the web pages show, computed on the server so a page works without JavaScript: SVG
//! charts and sparklines, and human-readable numbers, sizes and times.

pub mod chart;
pub mod fmt;
