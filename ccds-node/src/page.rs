//! The owner's status page and `/metrics`, over HTTP on a loopback address.
//!
//! * `GET /`: the page (HTML, CSS and a little JavaScript, embedded; no external resources).
//! * `GET /api/status`: the live status as JSON (what `ccds-node status --json` prints).
//! * `POST /api/pause`, `POST /api/resume`: as `ccds-node pause` and `resume`.
//! * `GET /metrics`: Prometheus metrics (see [`crate::metrics`]).
//!
//! Cross-site requests: the listener binds loopback only; every request must name a loopback
//! host in `Host` (so a DNS-rebound name never reads the page or its token); the POSTs need
//! the token the page was served with (random per daemon start) in an `X-CCDS-Token` header,
//! which a cross-site form cannot send and a cross-site script cannot set without a CORS
//! preflight this server never approves; and an `Origin`, when sent, must be this server.
//! Connections are bounded in number.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{info, instrument, warn};

use crate::NodeError;
use crate::agent::Agent;

/// Connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 16;

const PAGE: &str = include_str!("page.html");

/// A status page bound to its address, not yet serving.
pub struct StatusPage {
    listener: TcpListener,
    state: Arc<PageState>,
}

struct PageState {
    agent: Arc<Agent>,
    token: String,
    /// The page's own address, for the `Host` and `Origin` checks.
    addr: SocketAddr,
}

/// Binds the page on `addr` (port 0 picks one) and records its URL with the agent.
pub async fn bind(addr: SocketAddr, agent: Arc<Agent>) -> Result<StatusPage, NodeError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| NodeError::StatusPage { addr, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| NodeError::StatusPage { addr, source })?;
    let url = format!("http://{addr}/");
    info!(%url, "status page listening");
    agent.set_status_page(url);
    Ok(StatusPage {
        listener,
        state: Arc::new(PageState {
            agent,
            token: hex::encode(rand::random::<[u8; 16]>()),
            addr,
        }),
    })
}

impl StatusPage {
    /// Serves until dropped.
    pub async fn serve(self) {
        let router = Router::new()
            .route("/", get(page))
            .route("/api/status", get(status))
            .route("/api/pause", post(pause))
            .route("/api/resume", post(resume))
            .route("/metrics", get(metrics))
            .layer(middleware::from_fn_with_state(
                self.state.clone(),
                local_host_only,
            ))
            .with_state(self.state);
        let listener = Bounded {
            listener: self.listener,
            permits: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
        };
        if let Err(e) = axum::serve(listener, router).await {
            warn!(error = %e, "status page stopped");
        }
        std::future::pending::<()>().await;
    }
}

/// Whether `host` (a `Host` or `Origin` authority) names this server on a loopback name.
fn is_local_authority(host: &str, addr: SocketAddr) -> bool {
    let port = addr.port();
    [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("[::1]:{port}"),
        addr.to_string(),
    ]
    .iter()
    .any(|ok| ok.eq_ignore_ascii_case(host))
}

async fn local_host_only(
    State(state): State<Arc<PageState>>,
    request: Request,
    next: Next,
) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if !is_local_authority(host, state.addr) {
        warn!(host, "status page request for another host refused");
        return (
            StatusCode::MISDIRECTED_REQUEST,
            "this page answers only at its loopback address\n",
        )
            .into_response();
    }
    next.run(request).await
}

#[instrument(skip_all)]
async fn page(State(state): State<Arc<PageState>>) -> Response {
    let html = PAGE.replace("{{TOKEN}}", &state.token);
    let mut response = Html(html).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; \
             connect-src 'self'; frame-ancestors 'none'; form-action 'none'",
        ),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[instrument(skip_all)]
async fn status(State(state): State<Arc<PageState>>) -> Response {
    Json(state.agent.view()).into_response()
}

#[instrument(skip_all)]
async fn metrics(State(state): State<Arc<PageState>>) -> Response {
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        crate::metrics::render(&state.agent),
    )
        .into_response()
}

/// Checks a POST comes from the page: its token, and its origin when the browser names one.
fn from_the_page(state: &PageState, headers: &HeaderMap) -> Result<(), Response> {
    let token = headers.get("x-ccds-token").and_then(|t| t.to_str().ok());
    if token != Some(state.token.as_str()) {
        return Err((
            StatusCode::FORBIDDEN,
            "missing or wrong X-CCDS-Token: use the buttons on the status page\n",
        )
            .into_response());
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        let local = origin
            .strip_prefix("http://")
            .is_some_and(|authority| is_local_authority(authority, state.addr));
        if !local {
            return Err((StatusCode::FORBIDDEN, "cross-site request refused\n").into_response());
        }
    }
    Ok(())
}

#[instrument(skip_all)]
async fn pause(State(state): State<Arc<PageState>>, headers: HeaderMap) -> Response {
    if let Err(refused) = from_the_page(&state, &headers) {
        return refused;
    }
    match state.agent.pause() {
        Ok(()) => Json(state.agent.view()).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

#[instrument(skip_all)]
async fn resume(State(state): State<Arc<PageState>>, headers: HeaderMap) -> Response {
    if let Err(refused) = from_the_page(&state, &headers) {
        return refused;
    }
    match state.agent.resume() {
        Ok(()) => Json(state.agent.view()).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// A listener that holds a permit per open connection, so at most [`MAX_CONNECTIONS`] are
/// served at once.
struct Bounded {
    listener: TcpListener,
    permits: Arc<Semaphore>,
}

impl axum::serve::Listener for Bounded {
    type Io = BoundedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        loop {
            match self.listener.accept().await {
                Ok((stream, addr)) => {
                    return (
                        BoundedStream {
                            stream,
                            _permit: permit,
                        },
                        addr,
                    );
                }
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    warn!(error = %e, "status page accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

/// A connection holding its permit.
struct BoundedStream {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
}

impl AsyncRead for BoundedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for BoundedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
