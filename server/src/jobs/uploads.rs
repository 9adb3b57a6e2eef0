//! Noise images users upload (web form or `POST /api/v1/uploads`): stored once under
//! `uploads/` in the artifact store, named by their SHA-256, and referred to from a job's
//! config as `DATA.NOISE_IMAGE: uploads/<sha256>.<png|jpg>`. A job may name only such an
//! upload, and only one its owner made (the `upload` table; admins may name any), never an
//! arbitrary server path; workers resolve it against their artifact root, so several machines
//! sharing one store read the same file.

use std::path::{Path, PathBuf};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use sha2::{Digest, Sha256};
use sqlx::PgPool;

use crate::error::{Error, ErrorBody, Result};
use crate::http::state::AppState;
use crate::tokens::Caller;

/// The folder under the artifact root.
pub const DIR: &str = "uploads";
/// Largest accepted upload.
pub const MAX_BYTES: usize = 32 << 20;
/// Largest accepted side, as for a generated noise image.
const MAX_SIDE: u32 = 16384;
/// Largest accepted image in pixels (16 MP: about 200 MB once a worker holds it as float32 RGB).
const MAX_PIXELS: u64 = 1 << 24;
/// The config key an upload is used for.
const KEY: &str = "DATA.NOISE_IMAGE";

/// Checks that `bytes` is a PNG or JPEG of a sensible size and stores it (idempotently).
/// Returns the reference a config uses, `uploads/<sha256>.<ext>`.
pub fn store(artifacts: &Path, bytes: &[u8]) -> Result<String> {
    if bytes.len() > MAX_BYTES {
        return Err(Error::invalid(
            Some(KEY),
            format!(
                "the image is {} bytes; at most {MAX_BYTES} are accepted",
                bytes.len()
            ),
        ));
    }
    let format = image::guess_format(bytes).map_err(|_| {
        Error::invalid(Some(KEY), "the file is not an image (expected PNG or JPEG)")
    })?;
    let ext = match format {
        image::ImageFormat::Png => "png",
        image::ImageFormat::Jpeg => "jpg",
        other => {
            return Err(Error::invalid(
                Some(KEY),
                format!("{other:?} images are not supported (expected PNG or JPEG)"),
            ))
        }
    };
    // The size the header declares is checked before anything is decoded: a small file can
    // declare a huge image. The decoder is then held to that size, in case the header lied.
    let reader = || image::ImageReader::with_format(std::io::Cursor::new(bytes), format);
    let (w, h) = reader()
        .into_dimensions()
        .map_err(|e| Error::invalid(Some(KEY), format!("the image cannot be read: {e}")))?;
    if w > MAX_SIDE || h > MAX_SIDE || u64::from(w) * u64::from(h) > MAX_PIXELS {
        return Err(Error::invalid(
            Some(KEY),
            format!(
                "the image is {w}x{h}; at most {MAX_SIDE} pixels a side and {MAX_PIXELS} pixels \
                 in all are accepted"
            ),
        ));
    }
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(w);
    limits.max_image_height = Some(h);
    let mut decoder = reader();
    decoder.limits(limits);
    decoder
        .decode()
        .map_err(|e| Error::invalid(Some(KEY), format!("the image cannot be decoded: {e}")))?;
    let name = format!("{}.{ext}", hex::encode(Sha256::digest(bytes)));
    let dir = artifacts.join(DIR);
    let path = dir.join(&name);
    if !path.exists() {
        std::fs::create_dir_all(&dir).map_err(Error::io(format!("create {}", dir.display())))?;
        ifp_trainer::checkpoint::write_atomic(&path, bytes)?;
    }
    Ok(format!("{DIR}/{name}"))
}

/// [`store`] on a blocking thread (decoding a large image takes a while), recorded as
/// `owner`'s upload.
pub async fn save(pool: &PgPool, artifacts: &Path, owner: &str, bytes: Bytes) -> Result<String> {
    let dir = artifacts.to_path_buf();
    let path = tokio::task::spawn_blocking(move || store(&dir, &bytes))
        .await
        .map_err(|e| Error::Internal(format!("storing an upload: {e}")))??;
    sqlx::query(
        "insert into upload (path, owner) values ($1, $2)
         on conflict (path, owner) do update set updated_at = now()",
    )
    .bind(&path)
    .bind(owner)
    .execute(pool)
    .await?;
    Ok(path)
}

/// Whether `reference` has the shape `store` gives (`uploads/<64 hex>.png|jpg`).
fn well_formed(reference: &Path) -> bool {
    let Some(s) = reference.to_str() else {
        return false;
    };
    let Some(name) = s.strip_prefix("uploads/") else {
        return false;
    };
    let Some((stem, ext)) = name.split_once('.') else {
        return false;
    };
    stem.len() == 64
        && stem
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        && matches!(ext, "png" | "jpg")
}

/// Refuses a config whose noise image is not an existing upload of `caller`'s (any upload, for
/// an admin). Someone else's upload gets the same answer as a missing one, so its existence is
/// not confirmed.
pub async fn check(
    pool: &PgPool,
    artifacts: &Path,
    caller: &Caller,
    cfg: &ifp_trainer::Config,
) -> Result<()> {
    let Some(img) = &cfg.data.noise_image else {
        return Ok(());
    };
    check_reference(img)?;
    let missing = || {
        Error::invalid(
            Some(KEY),
            format!(
                "no upload `{}` of yours on this server: upload the image first",
                img.display()
            ),
        )
    };
    if !caller.is_admin {
        let (mine,): (bool,) =
            sqlx::query_as("select exists (select 1 from upload where path = $1 and owner = $2)")
                .bind(img.to_string_lossy().as_ref())
                .bind(&caller.name)
                .fetch_one(pool)
                .await?;
        if !mine {
            return Err(missing());
        }
    }
    if !artifacts.join(img).is_file() {
        return Err(missing());
    }
    Ok(())
}

/// Refuses a noise image reference that is not of the shape `store` gives.
fn check_reference(img: &Path) -> Result<()> {
    if well_formed(img) {
        return Ok(());
    }
    Err(Error::invalid(
        Some(KEY),
        format!(
            "`{}` is not an uploaded image: upload it first (POST /api/v1/uploads or the web \
             form) and use the `uploads/<sha256>.<ext>` reference it returns",
            img.display()
        ),
    ))
}

/// Points a relative noise image reference at this machine's artifact store.
pub fn resolve(artifacts: &Path, cfg: &mut ifp_trainer::Config) {
    if let Some(img) = &cfg.data.noise_image {
        if img.is_relative() {
            let full: PathBuf = artifacts.join(img);
            cfg.data.noise_image = Some(full);
        }
    }
}

/// `POST /api/v1/uploads` response.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Uploaded {
    /// Put this in `DATA.NOISE_IMAGE`.
    pub path: String,
}

#[utoipa::path(post, path = "/api/v1/uploads", tag = "uploads",
    request_body(content = crate::http::routes::openapi::Binary, content_type = "application/octet-stream",
        description = "A PNG or JPEG noise image (at most 32 MiB, 16384 px a side, 16 MP in all)"),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Stored (uploading the same bytes again gives the same path)", body = Uploaded),
        (status = 401, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 408, description = "The body did not arrive within 30 s of the request getting a place", body = ErrorBody),
        (status = 503, description = "Too many submissions or uploads at once; `Retry-After` says when to try again", body = ErrorBody),
        (status = 422, description = "Not a usable PNG or JPEG", body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    body: Bytes,
) -> Result<(StatusCode, Json<Uploaded>)> {
    let path = save(&state.pool, &state.artifacts, &caller.name, body).await?;
    Ok((StatusCode::CREATED, Json(Uploaded { path })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png() -> Vec<u8> {
        let img = image::RgbImage::from_pixel(5, 3, image::Rgb([10, 200, 30]));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png)
            .expect("encode");
        out.into_inner()
    }

    #[test]
    fn stores_by_content_and_checks_references() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = store(dir.path(), &png()).expect("store");
        assert_eq!(r, store(dir.path(), &png()).expect("again"));
        assert!(well_formed(Path::new(&r)), "{r}");
        let mut cfg = ifp_trainer::config::preset("tiny").expect("tiny");
        check_reference(Path::new(&r)).expect("a stored upload's reference");
        cfg.data.noise_image = Some(r.clone().into());
        resolve(dir.path(), &mut cfg);
        assert_eq!(cfg.data.noise_image, Some(dir.path().join(&r)));
        for bad in ["/etc/passwd", "uploads/../x.png", "uploads/abc.png"] {
            assert!(check_reference(Path::new(bad)).is_err(), "{bad}");
        }
    }

    /// A PNG whose header declares `w` x `h` but whose data is that of a 1x1 image: decoding it
    /// would fail, so a refusal that names the size came from the header alone.
    fn png_declaring(w: u32, h: u32) -> Vec<u8> {
        fn crc32(bytes: &[u8]) -> u32 {
            let mut c = 0xffff_ffffu32;
            for &b in bytes {
                c ^= u32::from(b);
                for _ in 0..8 {
                    c = if c & 1 == 1 {
                        0xedb8_8320 ^ (c >> 1)
                    } else {
                        c >> 1
                    };
                }
            }
            !c
        }
        let mut out = png();
        // Signature (8 bytes), then the IHDR chunk: length (4), "IHDR" (4), width, height...
        out[16..20].copy_from_slice(&w.to_be_bytes());
        out[20..24].copy_from_slice(&h.to_be_bytes());
        let crc = crc32(&out[12..29]);
        out[29..33].copy_from_slice(&crc.to_be_bytes());
        out
    }

    #[test]
    fn the_declared_size_is_checked_before_decoding() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (w, h) in [(16000, 16000), (20000, 10), (5000, 4000)] {
            let e = store(dir.path(), &png_declaring(w, h)).expect_err("too large");
            assert!(e.to_string().contains(&format!("{w}x{h}")), "{w}x{h}: {e}");
        }
        // Within the limits the lie is found by the decoder, and nothing is stored.
        let e = store(dir.path(), &png_declaring(300, 200)).expect_err("truncated data");
        assert!(e.to_string().contains("decoded"), "{e}");
        assert!(!dir.path().join(DIR).exists());
    }

    #[test]
    fn refuses_what_is_not_an_image() {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = store(dir.path(), b"hello").expect_err("not an image");
        assert!(e.to_string().contains("not an image"), "{e}");
    }
}
