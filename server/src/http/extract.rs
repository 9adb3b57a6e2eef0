//! Request extractors whose rejections are the crate's JSON errors instead of axum's plain-text
//! ones: the caller (bearer token, or a browser session for reads), JSON bodies and query
//! strings.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::request::Parts;
use axum::http::{header, Method, StatusCode};
use axum::Json;
use serde::de::DeserializeOwned;

use axum_extra::extract::CookieJar;

use crate::error::Error;
use crate::http::session::{self, Session};
use crate::http::state::AppState;
use crate::tokens::{self, Caller};

impl FromRequestParts<AppState> for Caller {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, rest) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            })
            .filter(|t| !t.is_empty());
        if let Some(token) = token {
            return tokens::authenticate(&state.pool, state.admin_token_hash.as_deref(), token)
                .await?
                .ok_or(Error::Unauthorized);
        }
        // A signed-in browser may read through the API (the job page's live updates and
        // downloads do). Only reads: a cookie alone never changes anything, so the API needs
        // no anti-forgery token.
        if parts.method == Method::GET || parts.method == Method::HEAD {
            if let Some(s) = browser_session(parts, state).await? {
                return Ok(s.caller);
            }
        }
        Err(Error::Unauthorized)
    }
}

/// The session of the request's session cookie, if it has a live one.
pub async fn browser_session(parts: &Parts, state: &AppState) -> Result<Option<Session>, Error> {
    let jar = CookieJar::from_headers(&parts.headers);
    match jar.get(session::COOKIE) {
        Some(c) => session::lookup(&state.pool, state.admin_token_hash.as_deref(), c.value()).await,
        None => Ok(None),
    }
}

/// A JSON body; malformed or mistyped bodies become 400/413/415/422 JSON errors.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Error> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(r) => Err(json_rejection(r)),
        }
    }
}

fn json_rejection(r: JsonRejection) -> Error {
    match r {
        JsonRejection::JsonDataError(e) => Error::invalid(None, e.body_text()),
        JsonRejection::JsonSyntaxError(e) => Error::BadRequest(e.body_text()),
        JsonRejection::MissingJsonContentType(_) => Error::Status {
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            message: "expected `Content-Type: application/json`".into(),
        },
        JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            Error::Status {
                status: StatusCode::PAYLOAD_TOO_LARGE,
                message: "request body too large".into(),
            }
        }
        other => Error::BadRequest(other.body_text()),
    }
}

/// A query string; bad parameters become 422 JSON errors.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Error> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(v)) => Ok(ApiQuery(v)),
            Err(QueryRejection::FailedToDeserializeQueryString(e)) => {
                Err(Error::invalid(None, e.body_text()))
            }
            Err(other) => Err(Error::BadRequest(other.body_text())),
        }
    }
}
