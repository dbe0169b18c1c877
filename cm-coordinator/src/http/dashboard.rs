//! The operator's web dashboard: one self-contained page (HTML, CSS and script, no external
//! resources) that reads the API with the token the operator enters (kept in the tab's
//! session storage only).

use axum::http::header;
use axum::response::IntoResponse;

/// The page.
const PAGE: &str = include_str!("dashboard.html");

/// `GET /`.
pub async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
            ),
        ],
        PAGE,
    )
}
