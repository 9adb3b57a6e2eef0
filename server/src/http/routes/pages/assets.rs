//! The stylesheet, script, icon and the PyTorch model module, embedded in the binary from `web/static` so a single file
//! runs anywhere. Pages link them with `?v=<content hash>`, so browsers may cache them forever
//! and still get a new version after an upgrade.

use std::sync::LazyLock;

use axum::extract::{Path, RawQuery};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::error_page;
use crate::error::Error;

/// `(name, content type, bytes)`.
const FILES: &[(&str, &str, &[u8])] = &[
    (
        "style.css",
        "text/css; charset=utf-8",
        include_bytes!("../../../../../web/static/style.css"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../../../../web/static/app.js"),
    ),
    (
        "favicon.svg",
        "image/svg+xml",
        include_bytes!("../../../../../web/static/favicon.svg"),
    ),
    // uPlot (MIT, web/static/vendor/uPlot.LICENSE), the charting library the pages' script
    // draws interactive charts with; `web/vendor.sh` fetches and checks it.
    (
        "uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../../../../web/static/vendor/uPlot.iife.min.js"),
    ),
    (
        "uPlot.min.css",
        "text/css; charset=utf-8",
        include_bytes!("../../../../../web/static/vendor/uPlot.min.css"),
    ),
    (
        "uPlot.LICENSE",
        "text/plain; charset=utf-8",
        include_bytes!("../../../../../web/static/vendor/uPlot.LICENSE"),
    ),
    // The networks in PyTorch, so a downloaded checkpoint loads with one import.
    (
        "ifp_models.py",
        "text/x-python; charset=utf-8",
        include_bytes!("../../../../../web/static/ifp_models.py"),
    ),
];

static VERSION: LazyLock<String> = LazyLock::new(|| {
    let mut h = Sha256::new();
    for (name, _, bytes) in FILES {
        h.update(name.as_bytes());
        h.update(bytes);
    }
    hex::encode(h.finalize())[..12].to_string()
});

/// The content hash the pages put in asset URLs.
pub fn version() -> &'static str {
    VERSION.as_str()
}

/// `GET /static/{file}`.
pub async fn serve(Path(file): Path<String>, RawQuery(query): RawQuery) -> Response {
    let Some((_, mime, bytes)) = FILES.iter().find(|(n, _, _)| *n == file) else {
        return error_page(Error::NotFound);
    };
    let versioned = query.as_deref() == Some(&format!("v={}", version()));
    let cache = if versioned {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, *mime),
            (header::CACHE_CONTROL, cache),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        *bytes,
    )
        .into_response()
}
