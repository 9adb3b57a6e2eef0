//! Browser sessions for the web pages: signing in with an API token creates a session row and
//! an HttpOnly, SameSite=Strict cookie; every form that changes something carries the session's
//! anti-forgery token. The database keeps only the cookie's SHA-256, and a session is valid only
//! while the token it was opened with still is.

use axum::http::{header, HeaderMap};
use axum_extra::extract::cookie::{Cookie, SameSite};
use sha2::{Digest, Sha256};
use sqlx::PgPool;

use crate::error::Result;
use crate::tokens::{self, Caller};

/// The session cookie's name.
pub const COOKIE: &str = "ifp_session";
/// The cookie holding the sign-in form's anti-forgery token (there is no session yet).
pub const SIGNIN_COOKIE: &str = "ifp_signin";
/// How long a session lasts after signing in.
pub const LIFETIME: chrono::Duration = chrono::Duration::days(7);

/// A signed-in browser.
#[derive(Debug, Clone)]
pub struct Session {
    pub caller: Caller,
    /// The anti-forgery token the session's forms must send back.
    pub csrf: String,
}

/// Opens a session for `caller`, who presented the token hashed as `token_hash`. Returns the
/// cookie value (shown once, never stored).
pub async fn create(pool: &PgPool, caller: &Caller, token_hash: &str) -> Result<String> {
    let cookie = tokens::generate();
    // Expired sessions are swept here: signing in is rare enough that this costs nothing.
    sqlx::query("delete from session where expires_at < now()")
        .execute(pool)
        .await?;
    sqlx::query(
        "insert into session (id, token_hash, name, is_admin, csrf, expires_at)
         values ($1, $2, $3, $4, $5, now() + make_interval(secs => $6))",
    )
    .bind(tokens::hash(&cookie))
    .bind(token_hash)
    .bind(&caller.name)
    .bind(caller.is_admin)
    .bind(tokens::generate())
    .bind(LIFETIME.num_seconds() as f64)
    .execute(pool)
    .await?;
    Ok(cookie)
}

/// The live session a cookie value belongs to, if any. `admin_hash` is the configured admin
/// token's hash: sessions opened with it stay valid while it is configured.
pub async fn lookup(
    pool: &PgPool,
    admin_hash: Option<&str>,
    cookie: &str,
) -> Result<Option<Session>> {
    let row: Option<(String, bool, String)> = sqlx::query_as(&format!(
        "select s.name, s.is_admin, s.csrf from session s
         where s.id = $1 and s.expires_at > now()
           and (s.token_hash = $2
                or exists (select 1 from api_token t
                           where t.token_hash = s.token_hash and {}))",
        tokens::VALID
    ))
    .bind(tokens::hash(cookie))
    .bind(admin_hash)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(name, is_admin, csrf)| Session {
        caller: Caller { name, is_admin },
        csrf,
    }))
}

/// Ends the session of a cookie value (signing out).
pub async fn delete(pool: &PgPool, cookie: &str) -> Result<()> {
    sqlx::query("delete from session where id = $1")
        .bind(tokens::hash(cookie))
        .execute(pool)
        .await?;
    Ok(())
}

/// Whether two secrets are equal, in a time that does not depend on where they differ.
pub fn same_secret(a: &str, b: &str) -> bool {
    Sha256::digest(a.as_bytes()) == Sha256::digest(b.as_bytes())
}

/// Whether the request reached us over HTTPS (directly or through a proxy that says so), so
/// cookies get the `Secure` attribute exactly when the browser can send them back.
pub fn is_https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"))
        || headers
            .get(header::FORWARDED)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.to_ascii_lowercase().contains("proto=https"))
}

/// A cookie with the attributes every cookie of ours has.
pub fn cookie(
    name: &'static str,
    value: String,
    secure: bool,
    max_age: chrono::Duration,
) -> Cookie<'static> {
    Cookie::build((name, value))
        .path("/")
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(secure)
        .max_age(time_duration(max_age))
        .build()
}

/// A cookie that deletes `name` in the browser.
pub fn removal(name: &'static str, secure: bool) -> Cookie<'static> {
    cookie(name, String::new(), secure, chrono::Duration::zero())
}

fn time_duration(d: chrono::Duration) -> time::Duration {
    time::Duration::seconds(d.num_seconds())
}

/// Whether a state-changing request comes from one of our own pages: a present `Origin` (or,
/// failing that, `Referer`) must name the host the request was sent to. Browsers send `Origin`
/// on every cross-site POST, so this stops forged forms even before the token check.
pub fn same_origin(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let source = headers
        .get(header::ORIGIN)
        .or_else(|| headers.get(header::REFERER))
        .and_then(|v| v.to_str().ok());
    match source {
        None => true,
        Some("null") => false,
        Some(s) => {
            let rest = s.split_once("://").map_or(s, |(_, r)| r);
            let authority = rest.split('/').next().unwrap_or(rest);
            authority.eq_ignore_ascii_case(host)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().expect("header value"));
        }
        h
    }

    #[test]
    fn origin_must_match_host() {
        assert!(same_origin(&headers(&[
            ("host", "a:8080"),
            ("origin", "http://a:8080")
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "a:8080"),
            ("origin", "http://evil")
        ])));
        assert!(!same_origin(&headers(&[("host", "a"), ("origin", "null")])));
        assert!(same_origin(&headers(&[
            ("host", "a"),
            ("referer", "https://a/jobs/new")
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "a"),
            ("referer", "https://b/jobs/new")
        ])));
        assert!(same_origin(&headers(&[("host", "a")])));
    }

    #[test]
    fn https_is_detected_from_proxy_headers() {
        assert!(is_https(&headers(&[("x-forwarded-proto", "https")])));
        assert!(is_https(&headers(&[(
            "forwarded",
            "for=1.2.3.4;proto=https"
        )])));
        assert!(!is_https(&headers(&[("x-forwarded-proto", "http")])));
        assert!(!is_https(&HeaderMap::new()));
    }

    #[test]
    fn secrets_compare_by_value() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
    }
}
