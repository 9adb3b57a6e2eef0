//! The data path: noise image, random crops, spectrum masks and corruption.

pub mod corrupt;
pub mod crop;
pub mod image;
pub mod mask;
pub mod noise;
pub mod panels;

use std::path::PathBuf;

/// Every failure of the data path. Messages name the offending path or value so that a bad
/// config or upload can be fixed without reading the code.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The image file could not be opened or decoded.
    #[error("cannot read image {path}: {source}")]
    ImageRead {
        path: PathBuf,
        #[source]
        source: ::image::ImageError,
    },
    /// The image could not be encoded or written.
    #[error("cannot write image {path}: {source}")]
    ImageWrite {
        path: PathBuf,
        #[source]
        source: ::image::ImageError,
    },
    /// A parameter outside the range the operation can honour.
    #[error("invalid {name} = {value}: {expected}")]
    InvalidParameter {
        name: &'static str,
        value: String,
        expected: String,
    },
    /// A buffer whose length or shape does not match what the operation was told.
    #[error("shape mismatch for {what}: expected {expected}, got {got}")]
    Shape {
        what: &'static str,
        expected: String,
        got: String,
    },
}

impl DataError {
    pub(crate) fn invalid(
        name: &'static str,
        value: impl std::fmt::Display,
        expected: impl Into<String>,
    ) -> Self {
        DataError::InvalidParameter {
            name,
            value: value.to_string(),
            expected: expected.into(),
        }
    }

    pub(crate) fn shape(
        what: &'static str,
        expected: impl std::fmt::Display,
        got: impl std::fmt::Display,
    ) -> Self {
        DataError::Shape {
            what,
            expected: expected.to_string(),
            got: got.to_string(),
        }
    }
}
