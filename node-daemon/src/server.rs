//! The HTTP faces of the daemon: the IPAM API on the unix socket (for the CNI plugin), and health and
//! metrics on TCP (for kubelet probes and Prometheus).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use spiderpool_agent_api::{
    ErrorResponse, IpamAddArgs, IpamBatchDelArgs, IpamDelArgs, IpamGcArgs, PATH_GC, PATH_HEALTHY, PATH_IP,
    PATH_IPS, PATH_WORKLOAD_ENDPOINT, codes,
};
use tracing::Instrument;

use crate::allocator::Allocator;
use crate::error::IpamError;

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AppState {
    /// The allocator.
    pub allocator: Allocator,
    /// Set once the caches have synced.
    pub ready: Arc<AtomicBool>,
}

fn error_response(status: StatusCode, code: u32, msg: String) -> Response {
    (
        status,
        Json(ErrorResponse {
            code,
            msg,
            details: String::new(),
        }),
    )
        .into_response()
}

impl IntoResponse for IpamError {
    fn into_response(self) -> Response {
        let status = match self {
            IpamError::BadRequest(_) | IpamError::Annotation(_) => StatusCode::BAD_REQUEST,
            IpamError::Api { .. } | IpamError::PoolWrite(_) | IpamError::Timeout(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            IpamError::Forbidden(_) => StatusCode::FORBIDDEN,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        error_response(status, self.code(), self.to_string())
    }
}

fn not_ready() -> Response {
    error_response(
        StatusCode::SERVICE_UNAVAILABLE,
        codes::TRY_AGAIN_LATER,
        "the node daemon is starting: its caches have not synced yet".to_owned(),
    )
}

/// The IPAM API router (served on the unix socket).
pub fn ipam_router(state: AppState) -> Router {
    Router::new()
        .route(PATH_HEALTHY, get(healthy))
        .route(PATH_IP, post(add).delete(del))
        .route(PATH_IPS, axum::routing::delete(del_all))
        .route(PATH_GC, post(gc))
        .route(PATH_WORKLOAD_ENDPOINT, get(workload_endpoint))
        .with_state(state)
}

async fn healthy(State(state): State<AppState>) -> Response {
    if state.ready.load(Ordering::Acquire) {
        StatusCode::OK.into_response()
    } else {
        not_ready()
    }
}

async fn add(State(state): State<AppState>, Json(args): Json<IpamAddArgs>) -> Response {
    if !state.ready.load(Ordering::Acquire) {
        return not_ready();
    }
    let span = tracing::info_span!("add", pod = %format!("{}/{}", args.pod_namespace, args.pod_name), container = %args.container_id, ifname = %args.if_name);
    async move {
        match state.allocator.add(&args).await {
            Ok(response) => {
                let addresses: Vec<&str> = response.ips.iter().map(|i| i.address.as_str()).collect();
                tracing::info!(?addresses, "allocated");
                Json(response).into_response()
            }
            Err(e) => {
                tracing::warn!(error = %e, code = e.code(), "allocation failed");
                e.into_response()
            }
        }
    }
    .instrument(span)
    .await
}

async fn del(State(state): State<AppState>, Json(args): Json<IpamDelArgs>) -> Response {
    if !state.ready.load(Ordering::Acquire) {
        return not_ready();
    }
    let span = tracing::info_span!("del", pod = %format!("{}/{}", args.pod_namespace, args.pod_name), container = %args.container_id, ifname = %args.if_name);
    async move {
        match state.allocator.del(&args).await {
            Ok(()) => {
                tracing::info!("released");
                StatusCode::OK.into_response()
            }
            Err(e) => {
                tracing::warn!(error = %e, "release failed");
                e.into_response()
            }
        }
    }
    .instrument(span)
    .await
}

async fn del_all(State(state): State<AppState>, Json(args): Json<IpamBatchDelArgs>) -> Response {
    if !state.ready.load(Ordering::Acquire) {
        return not_ready();
    }
    let span = tracing::info_span!("release_all", pod = %format!("{}/{}", args.pod_namespace, args.pod_name), container = %args.container_id);
    async move {
        match state.allocator.release_all(&args).await {
            Ok(()) => StatusCode::OK.into_response(),
            Err(e) => {
                tracing::warn!(error = %e, "release of all addresses failed");
                e.into_response()
            }
        }
    }
    .instrument(span)
    .await
}

async fn gc(State(state): State<AppState>, Json(args): Json<IpamGcArgs>) -> Response {
    if !state.ready.load(Ordering::Acquire) {
        return not_ready();
    }
    let span = tracing::info_span!("gc", network = %args.net_name);
    async move {
        match state.allocator.gc(&args).await {
            Ok(response) => Json(response).into_response(),
            Err(e) => {
                tracing::warn!(error = %e, "GC failed");
                e.into_response()
            }
        }
    }
    .instrument(span)
    .await
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EndpointQuery {
    #[serde(default)]
    pod_namespace: String,
    #[serde(default)]
    pod_name: String,
}

async fn workload_endpoint(State(state): State<AppState>, Query(query): Query<EndpointQuery>) -> Response {
    match state
        .allocator
        .workload_endpoint(&query.pod_namespace, &query.pod_name)
        .await
    {
        Ok(Some(status)) => Json(status).into_response(),
        Ok(None) => error_response(
            StatusCode::NOT_FOUND,
            codes::UNKNOWN_CONTAINER,
            format!(
                "pod {}/{} holds no addresses",
                query.pod_namespace, query.pod_name
            ),
        ),
        Err(e) => e.into_response(),
    }
}

/// Health (`/v1/runtime/{startup,readiness,liveness}`, upstream's probe paths) and `/metrics`.
pub fn admin_router(state: AppState) -> Router {
    Router::new()
        .route("/v1/runtime/startup", get(probe_ready))
        .route("/v1/runtime/readiness", get(probe_ready))
        .route("/v1/runtime/liveness", get(|| async { StatusCode::OK }))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn probe_ready(State(state): State<AppState>) -> StatusCode {
    if state.ready.load(Ordering::Acquire) {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.allocator.metrics().encode(),
    )
        .into_response()
}

/// Binds the unix socket, replacing a stale one (a previous daemon's), with the directory created.
pub fn bind_socket(path: &Path) -> std::io::Result<tokio::net::UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    tokio::net::UnixListener::bind(path)
}
