//! The web pages: sign-in, the jobs list, the new-job form and the job page. Server-rendered
//! HTML (askama templates from `web/templates`) that works without JavaScript; a small script
//! (`web/static/app.js`) swaps in fresh server-rendered fragments for live updates.

mod assets;
mod auth;
mod compare;
mod curves;
mod examples;
mod finetune;
pub mod form;
mod job;
mod jobs;
mod new_job;
mod results;
pub(super) mod runs;
mod seeds_view;
mod submission;

use askama::Template;
use axum::extract::{DefaultBodyLimit, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use tower_http::set_header::SetResponseHeaderLayer;

use crate::error::Error;
use crate::http::extract::browser_session;
use crate::http::state::AppState;
use crate::tokens::Caller;

/// What every page's frame shows: the signed-in user (none on the sign-in page), the
/// anti-forgery token for its forms, and the asset version for cache-busting URLs.
pub struct Layout {
    pub title: String,
    pub user: Option<Caller>,
    pub csrf: String,
    pub assets: &'static str,
}

impl Layout {
    pub fn new(title: impl Into<String>, viewer: Option<&Viewer>) -> Self {
        Layout {
            title: title.into(),
            user: viewer.map(|v| v.caller.clone()),
            csrf: viewer.map(|v| v.csrf.clone()).unwrap_or_default(),
            assets: assets::version(),
        }
    }
}

/// A signed-in browser, for pages. Without a session the request is redirected to the
/// sign-in page, which comes back here afterwards.
pub struct Viewer {
    pub caller: Caller,
    pub csrf: String,
}

impl Viewer {
    /// A form's job submission by this user (forms do not set `max_attempts`), queued with
    /// `spec`.
    pub async fn submit(
        &self,
        state: &AppState,
        name: &str,
        priority: i32,
        parent: Option<uuid::Uuid>,
        spec: crate::jobs::spec::JobSpec,
    ) -> Result<crate::db::rows::Job, crate::error::Error> {
        let s = crate::jobs::service::Submission {
            name: name.trim().to_string(),
            owner: self.caller.name.clone(),
            is_admin: self.caller.is_admin,
            priority,
            max_attempts: crate::queue::DEFAULT_MAX_ATTEMPTS,
            parent,
        };
        crate::jobs::service::submit(&state.pool, &state.artifacts, s, &spec).await
    }
}

impl FromRequestParts<AppState> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        match browser_session(parts, state).await {
            Ok(Some(s)) => Ok(Viewer {
                caller: s.caller,
                csrf: s.csrf,
            }),
            Ok(None) => {
                let here = parts
                    .uri
                    .path_and_query()
                    .map_or("/", |p| p.as_str())
                    .to_string();
                let q = serde_urlencoded::to_string([("next", here)]).unwrap_or_default();
                Err(Redirect::to(&format!("/signin?{q}")).into_response())
            }
            Err(e) => Err(error_page(e)),
        }
    }
}

impl Viewer {
    /// Refuses a state-changing form that did not come from one of our pages: its origin
    /// must be ours and it must carry this session's anti-forgery token.
    pub fn check_form(&self, headers: &axum::http::HeaderMap, csrf: &str) -> Result<(), Error> {
        if !crate::http::session::same_origin(headers)
            || !crate::http::session::same_secret(csrf, &self.csrf)
        {
            return Err(Error::Forbidden(
                "this form has expired or did not come from this site; reload the page and try \
                 again"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// Renders a template, or the error page if rendering fails.
pub fn render(t: &impl Template) -> Response {
    match t.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => error_page(Error::Internal(format!("rendering a page: {e}"))),
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage {
    layout: Layout,
    status: u16,
    reason: String,
    message: String,
}

/// An error as an HTML page with the error's status (5xx say nothing internal; the cause is
/// logged by [`Error::public`]).
pub fn error_page(e: Error) -> Response {
    let (status, _, message, _) = e.public();
    let page = ErrorPage {
        layout: Layout::new(status.canonical_reason().unwrap_or("Error"), None),
        status: status.as_u16(),
        reason: status.canonical_reason().unwrap_or("Error").to_string(),
        message,
    };
    let html = page
        .render()
        .unwrap_or_else(|_| format!("{} {}", status.as_u16(), page.message));
    (status, Html(html)).into_response()
}

/// A page handler's result: errors become HTML error pages, not the API's JSON.
pub struct PageError(pub Error);

impl From<Error> for PageError {
    fn from(e: Error) -> Self {
        PageError(e)
    }
}

impl From<sqlx::Error> for PageError {
    fn from(e: sqlx::Error) -> Self {
        PageError(e.into())
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        error_page(self.0)
    }
}

pub type PageResult<T = Response> = Result<T, PageError>;

/// Strict browser policies for every page: only our own scripts, styles and images (plus the
/// `data:`/`blob:` previews), no framing, no sniffing.
const CSP: &str = "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; \
                   script-src 'self'; connect-src 'self'; frame-ancestors 'none'; \
                   form-action 'self'; base-uri 'none'";

/// The pages' routes.
pub fn router(state: &AppState) -> Router<AppState> {
    let upload_bytes = crate::jobs::uploads::MAX_BYTES + (1 << 20);
    let upload_limit = DefaultBodyLimit::max(upload_bytes);
    // The form pages render previews and parse configs: behind the gate, like the API's.
    let gate = |body_limit| {
        axum::middleware::from_fn_with_state(
            crate::http::gate::GateAt::new(state, body_limit),
            crate::http::gate::admit,
        )
    };
    Router::new()
        .route("/", get(jobs::list))
        .route("/jobs/rows", get(jobs::rows))
        .route(
            "/jobs/new",
            get(new_job::show)
                .post(new_job::submit)
                .route_layer(gate(upload_bytes))
                .layer(upload_limit),
        )
        .route(
            "/jobs/new/preview",
            post(new_job::preview)
                .route_layer(gate(upload_bytes))
                .layer(upload_limit),
        )
        .route(
            "/jobs/new/compare",
            get(compare::show)
                .post(compare::submit_form)
                .route_layer(gate(super::BODY_LIMIT)),
        )
        .route(
            "/jobs/new/finetune",
            get(finetune::show)
                .post(finetune::submit_form)
                .route_layer(gate(super::BODY_LIMIT)),
        )
        .route("/runs", get(runs::show))
        .route("/jobs/{id}", get(job::show))
        .route("/jobs/{id}/live", get(job::live))
        .route("/jobs/{id}/cancel", post(job::cancel))
        .route("/signin", get(auth::show).post(auth::signin))
        .route("/signout", post(auth::signout))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::REFERRER_POLICY,
            HeaderValue::from_static("same-origin"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ))
        .route("/static/{file}", get(assets::serve))
}
