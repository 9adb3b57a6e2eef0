//! API tokens: generation, hashed storage, lookup, listing and revocation. A token is shown once
//! when created; the database keeps only its SHA-256, so a leaked database does not leak working
//! tokens. A token may carry an expiry, and revoking it ends it (and the browser sessions opened
//! with it) at once.

use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use crate::error::{Error, Result};

/// Who is calling: the token's user name, and whether it may see every user's jobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub is_admin: bool,
}

/// The user name of the `IFP_ADMIN_TOKEN` / generated admin token.
pub const ADMIN_NAME: &str = "admin";

/// A new random token (256 bits, hex, with a recognisable prefix).
pub fn generate() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("ifp_{}", hex::encode(bytes))
}

pub fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Creates a token for user `name` and returns it (the only time it is visible). With
/// `expires_in` the token stops working that long from now.
pub async fn create(
    pool: &PgPool,
    name: &str,
    is_admin: bool,
    expires_in: Option<std::time::Duration>,
) -> Result<String> {
    let name = name.trim();
    if name.is_empty() || name.len() > 100 {
        return Err(Error::invalid(
            Some("name"),
            "a token name must be 1 to 100 characters",
        ));
    }
    if name == ADMIN_NAME && !is_admin {
        // Jobs submitted with the admin token are owned by this name.
        return Err(Error::invalid(
            Some("name"),
            "`admin` is reserved for admin tokens",
        ));
    }
    let expires_secs = match expires_in {
        Some(d) if d.is_zero() || d > MAX_LIFETIME => {
            return Err(Error::invalid(
                Some("expires_in"),
                format!(
                    "a token's lifetime must be between 1 second and {} days, not {}",
                    MAX_LIFETIME.as_secs() / 86_400,
                    humantime::format_duration(d)
                ),
            ))
        }
        d => d.map(|d| d.as_secs_f64()),
    };
    let token = generate();
    sqlx::query(
        "insert into api_token (id, name, token_hash, is_admin, expires_at)
         values ($1, $2, $3, $4, now() + make_interval(secs => $5))",
    )
    .bind(Uuid::new_v4())
    .bind(name)
    .bind(hash(&token))
    .bind(is_admin)
    .bind(expires_secs)
    .execute(pool)
    .await?;
    Ok(token)
}

/// The caller a presented token belongs to, if any. `admin_hash` is the hash of the configured
/// admin token.
pub async fn authenticate(
    pool: &PgPool,
    admin_hash: Option<&str>,
    token: &str,
) -> Result<Option<Caller>> {
    let h = hash(token);
    // Comparing hashes, not tokens, keeps the comparison time independent of the secret.
    if admin_hash == Some(h.as_str()) {
        return Ok(Some(Caller {
            name: ADMIN_NAME.into(),
            is_admin: true,
        }));
    }
    let row: Option<(String, bool)> = sqlx::query_as(&format!(
        "select name, is_admin from api_token t where token_hash = $1 and {VALID}"
    ))
    .bind(&h)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(name, is_admin)| Caller { name, is_admin }))
}

/// The longest lifetime `create` accepts (ten years): beyond that, leave the expiry out.
pub const MAX_LIFETIME: std::time::Duration = std::time::Duration::from_secs(3650 * 86_400);

/// The SQL condition (over `api_token t`) for a token that still works.
pub(crate) const VALID: &str =
    "t.revoked_at is null and (t.expires_at is null or t.expires_at > now())";

/// A stored token as `ifp token list` shows it (never the token itself).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TokenInfo {
    pub id: Uuid,
    pub name: String,
    pub is_admin: bool,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
    pub revoked_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl TokenInfo {
    /// `active`, `expired` or `revoked`.
    pub fn state(&self) -> &'static str {
        if self.revoked_at.is_some() {
            "revoked"
        } else if self.expires_at.is_some_and(|t| t <= chrono::Utc::now()) {
            "expired"
        } else {
            "active"
        }
    }
}

/// Every stored token, oldest first (the configured admin token is not stored).
pub async fn list(pool: &PgPool) -> Result<Vec<TokenInfo>> {
    Ok(sqlx::query_as(
        "select id, name, is_admin, created_at, expires_at, revoked_at from api_token
         order by created_at, id",
    )
    .fetch_all(pool)
    .await?)
}

/// Revokes the token whose id is `id` or starts with it (as `list` shows it; at least 8
/// characters so a prefix cannot match by accident). Revoking twice is not an error; the
/// token's first revocation time is kept.
pub async fn revoke(pool: &PgPool, id: &str) -> Result<TokenInfo> {
    let id = id.trim().to_ascii_lowercase();
    if id.len() < 8 || !id.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        return Err(Error::invalid(
            Some("id"),
            format!(
                "{id:?} is not a token id: give the id `ifp token list` shows (at least its \
                 first 8 characters)"
            ),
        ));
    }
    // The id as text starts with the prefix; `-` and hex digits cannot form a LIKE pattern.
    let ids: Vec<(Uuid,)> =
        sqlx::query_as("select id from api_token where id::text like $1 || '%' limit 2")
            .bind(&id)
            .fetch_all(pool)
            .await?;
    let target = match ids.as_slice() {
        [(one,)] => *one,
        [] => {
            return Err(Error::invalid(
                Some("id"),
                format!("no token has an id starting with {id}"),
            ))
        }
        _ => {
            return Err(Error::invalid(
                Some("id"),
                format!("several tokens have ids starting with {id}: give more of the id"),
            ))
        }
    };
    Ok(sqlx::query_as(
        "update api_token set revoked_at = coalesce(revoked_at, now()), updated_at = now()
         where id = $1
         returning id, name, is_admin, created_at, expires_at, revoked_at",
    )
    .bind(target)
    .fetch_one(pool)
    .await?)
}
