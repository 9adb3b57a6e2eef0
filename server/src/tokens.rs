//! API tokens: generation, hashed storage and lookup. A token is shown once when created; the
//! database keeps only its SHA-256, so a leaked database does not leak working tokens.

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

/// Creates a token for user `name` and returns it (the only time it is visible).
pub async fn create(pool: &PgPool, name: &str, is_admin: bool) -> Result<String> {
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
    let token = generate();
    sqlx::query("insert into api_token (id, name, token_hash, is_admin) values ($1, $2, $3, $4)")
        .bind(Uuid::new_v4())
        .bind(name)
        .bind(hash(&token))
        .bind(is_admin)
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
    let row: Option<(String, bool)> =
        sqlx::query_as("select name, is_admin from api_token where token_hash = $1")
            .bind(&h)
            .fetch_optional(pool)
            .await?;
    Ok(row.map(|(name, is_admin)| Caller { name, is_admin }))
}
