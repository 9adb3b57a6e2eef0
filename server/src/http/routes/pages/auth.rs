//! Signing in with an API token and out again. The sign-in form has no session yet, so its
//! anti-forgery token is a double-submit cookie (`ifp_signin`), which a forged cross-site form
//! cannot read or set.

use askama::Template;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use axum_extra::extract::CookieJar;
use serde::Deserialize;

use super::{render, Layout, PageResult, Viewer};
use crate::error::Error;
use crate::http::session;
use crate::http::state::AppState;
use crate::tokens;

#[derive(Template)]
#[template(path = "signin.html")]
struct SigninPage {
    layout: Layout,
    next: String,
    csrf: String,
    error: Option<String>,
}

#[derive(Deserialize)]
pub struct NextParam {
    next: Option<String>,
}

/// Only a path on this site: never `//host` or `https://host` (an open redirect).
fn safe_next(next: Option<&str>) -> String {
    match next {
        // Browsers drop tabs and newlines from URLs (`/\t/evil` becomes `//evil`, another
        // site), and a control character cannot go into a Location header at all.
        Some(n)
            if n.starts_with('/')
                && !n.starts_with("//")
                && !n.contains('\\')
                && !n.chars().any(|c| c.is_control() || c.is_whitespace()) =>
        {
            n.into()
        }
        _ => "/".into(),
    }
}

/// `GET /signin`.
pub async fn show(headers: HeaderMap, jar: CookieJar, Query(q): Query<NextParam>) -> Response {
    let (jar, csrf) = signin_token(jar, session::is_https(&headers));
    let page = SigninPage {
        layout: Layout::new("Sign in", None),
        next: safe_next(q.next.as_deref()),
        csrf,
        error: None,
    };
    (jar, render(&page)).into_response()
}

/// The sign-in form's token: the one in the browser's cookie, or a new one set now.
fn signin_token(jar: CookieJar, secure: bool) -> (CookieJar, String) {
    if let Some(c) = jar.get(session::SIGNIN_COOKIE) {
        let v = c.value().to_string();
        return (jar, v);
    }
    let token = tokens::generate();
    let cookie = session::cookie(
        session::SIGNIN_COOKIE,
        token.clone(),
        secure,
        chrono::Duration::hours(12),
    );
    (jar.add(cookie), token)
}

#[derive(Deserialize)]
pub struct SigninForm {
    token: String,
    csrf: String,
    next: Option<String>,
}

/// `POST /signin`: a valid token opens a session and goes on to `next`.
pub async fn signin(
    State(state): State<AppState>,
    headers: HeaderMap,
    jar: CookieJar,
    Form(f): Form<SigninForm>,
) -> PageResult {
    let secure = session::is_https(&headers);
    let cookie_token = jar
        .get(session::SIGNIN_COOKIE)
        .map(|c| c.value().to_string());
    let genuine = session::same_origin(&headers)
        && cookie_token.is_some_and(|t| session::same_secret(&t, &f.csrf));
    if !genuine {
        return Err(Error::Forbidden(
            "the sign-in form expired or did not come from this site; reload it and try again"
                .into(),
        )
        .into());
    }
    let next = safe_next(f.next.as_deref());
    let token = f.token.trim();
    let caller = if token.is_empty() {
        None
    } else {
        tokens::authenticate(&state.pool, state.admin_token_hash.as_deref(), token).await?
    };
    let Some(caller) = caller else {
        let page = SigninPage {
            layout: Layout::new("Sign in", None),
            next,
            csrf: f.csrf,
            error: Some(if token.is_empty() {
                "Paste an API token.".into()
            } else {
                "That token is not valid. Use the admin token `ifp serve` printed, or one from \
                 `ifp token create`."
                    .into()
            }),
        };
        return Ok((StatusCode::UNAUTHORIZED, render(&page)).into_response());
    };
    let cookie = session::create(&state.pool, &caller, &tokens::hash(token)).await?;
    let jar = jar
        .add(session::cookie(
            session::COOKIE,
            cookie,
            secure,
            session::LIFETIME,
        ))
        .add(session::removal(session::SIGNIN_COOKIE, secure));
    Ok((jar, Redirect::to(&next)).into_response())
}

#[derive(Deserialize)]
pub struct CsrfForm {
    csrf: String,
}

/// `POST /signout`.
pub async fn signout(
    State(state): State<AppState>,
    viewer: Viewer,
    headers: HeaderMap,
    jar: CookieJar,
    Form(f): Form<CsrfForm>,
) -> PageResult {
    viewer.check_form(&headers, &f.csrf)?;
    if let Some(c) = jar.get(session::COOKIE) {
        session::delete(&state.pool, c.value()).await?;
    }
    let jar = jar.add(session::removal(
        session::COOKIE,
        session::is_https(&headers),
    ));
    Ok((jar, Redirect::to("/signin")).into_response())
}

#[cfg(test)]
mod tests {
    use super::safe_next;

    #[test]
    fn next_stays_on_this_site() {
        assert_eq!(safe_next(Some("/jobs/1")), "/jobs/1");
        for bad in [
            "//evil.example",
            "https://evil.example",
            "/\\evil",
            "jobs",
            "/\t/evil.example",
            "/\n/evil.example",
            "/\r\n/evil",
            "/jobs\u{0}",
            "/ /evil.example",
        ] {
            assert_eq!(safe_next(Some(bad)), "/", "{bad}");
        }
        assert_eq!(safe_next(None), "/");
    }
}
