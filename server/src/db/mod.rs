//! The database: the embedded PostgreSQL cluster and migrations (`pg`), the rows queries return
//! (`rows`), and the value sets stored in text columns (`values`).

pub mod pg;
pub mod rows;
pub mod values;
