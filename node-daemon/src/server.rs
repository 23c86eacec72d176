//! The HTTP faces of the daemon: the IPAM API on the unix socket (for the CNI plugin), and health and
//! metrics on TCP (for kubelet probes and Prometheus).

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
use crate::health::Health;

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AppState {
    /// The allocator.
    pub allocator: Allocator,
    /// What the probes report; requests are refused until it says the agent started.
    pub health: Health,
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
    if state.health.started() {
        StatusCode::OK.into_response()
    } else {
        not_ready()
    }
}

async fn add(State(state): State<AppState>, Json(args): Json<IpamAddArgs>) -> Response {
    if !state.health.started() {
        return not_ready();
    }
    let span = tracing::info_span!("add", pod = %format!("{}/{}", args.pod_namespace, args.pod_name), container = %args.container_id, ifname = %args.if_name);
    let work = async move {
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
    .instrument(span);
    to_completion(work).await
}

async fn del(State(state): State<AppState>, Json(args): Json<IpamDelArgs>) -> Response {
    if !state.health.started() {
        return not_ready();
    }
    let span = tracing::info_span!("del", pod = %format!("{}/{}", args.pod_namespace, args.pod_name), container = %args.container_id, ifname = %args.if_name);
    let work = async move {
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
    .instrument(span);
    to_completion(work).await
}

async fn del_all(State(state): State<AppState>, Json(args): Json<IpamBatchDelArgs>) -> Response {
    if !state.health.started() {
        return not_ready();
    }
    let span = tracing::info_span!("release_all", pod = %format!("{}/{}", args.pod_namespace, args.pod_name), container = %args.container_id);
    let work = async move {
        match state.allocator.release_all(&args).await {
            Ok(()) => StatusCode::OK.into_response(),
            Err(e) => {
                tracing::warn!(error = %e, "release of all addresses failed");
                e.into_response()
            }
        }
    }
    .instrument(span);
    to_completion(work).await
}

async fn gc(State(state): State<AppState>, Json(args): Json<IpamGcArgs>) -> Response {
    if !state.health.started() {
        return not_ready();
    }
    let span = tracing::info_span!("gc", network = %args.net_name);
    let work = async move {
        match state.allocator.gc(&args).await {
            Ok(response) => Json(response).into_response(),
            Err(e) => {
                tracing::warn!(error = %e, "GC failed");
                e.into_response()
            }
        }
    }
    .instrument(span);
    to_completion(work).await
}

/// Runs a request's work in a task of its own, so that it finishes even when the plugin gives up and
/// closes the connection (its deadline is shorter than the daemon's): dropped half-way, an ADD could
/// leave an address recorded for its pod with no SpiderEndpoint naming it, which the DEL that follows
/// would not find. The endpoint lock makes that DEL wait for the ADD to finish.
async fn to_completion(work: impl Future<Output = Response> + Send + 'static) -> Response {
    match tokio::spawn(work).await {
        Ok(response) => response,
        Err(failed) => {
            tracing::error!(error = %failed, "the request's task failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
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
        .route("/v1/runtime/startup", get(probe_startup))
        .route("/v1/runtime/readiness", get(probe_readiness))
        .route("/v1/runtime/liveness", get(probe_liveness))
        .route("/metrics", get(metrics))
        .with_state(state)
}

fn probe(result: Result<(), String>) -> Response {
    match result {
        Ok(()) => StatusCode::OK.into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why).into_response(),
    }
}

/// Started: the caches synced and the socket is served.
async fn probe_startup(State(state): State<AppState>) -> Response {
    probe(if state.health.started() {
        Ok(())
    } else {
        Err("starting: the caches have not synced yet".to_owned())
    })
}

/// Can serve an ADD ([`Health::readiness`]).
async fn probe_readiness(State(state): State<AppState>) -> Response {
    probe(state.health.readiness())
}

/// No pool writer is stuck ([`Health::liveness`]).
async fn probe_liveness(State(state): State<AppState>) -> Response {
    probe(state.health.liveness())
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::api::fake::FakeApi;
    use crate::config::Config;
    use crate::metrics::Metrics;
    use crate::writer::PoolWriters;

    fn state() -> AppState {
        state_and_api().0
    }

    fn state_and_api() -> (AppState, std::sync::Arc<FakeApi>) {
        let (fake, stores) = FakeApi::new("n1");
        let config = Config::new("n1");
        let health = Health::new(Duration::from_secs(30));
        let writers = PoolWriters::new(
            fake.clone(),
            &config,
            stores.clone(),
            Metrics::new(),
            health.clone(),
        );
        let allocator = Allocator::new(fake.clone(), config, stores, writers, Metrics::new());
        (AppState { allocator, health }, fake)
    }

    /// Sends raw `request` bytes over the socket and returns the status line (empty: the server
    /// closed the connection without one).
    fn raw(socket: &std::path::Path, request: &[u8]) -> String {
        use std::io::{Read as _, Write as _};
        let Ok(mut stream) = std::os::unix::net::UnixStream::connect(socket) else {
            return "unreachable".to_owned();
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(20)));
        // (No half-close after writing: hyper closes a connection whose client half-closes before the
        // answer is written.)
        let _ = stream.write_all(request);
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        String::from_utf8_lossy(&answer)
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned()
    }

    fn post(body: &[u8]) -> Vec<u8> {
        let mut request = format!(
            "POST {} HTTP/1.1\r\nhost: agent\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            spiderpool_agent_api::PATH_IP,
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        request
    }

    /// What a plugin (or anything that can open the socket) sends cannot panic the daemon or stop it
    /// serving: every such request gets a client error.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_request_body_panics_the_daemon_or_stops_it_serving() {
        let state = state();
        state.health.set_started();
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let lock = crate::socket::lock(&socket, "n1", Duration::ZERO).await.unwrap();
        let (listener, _file) = crate::socket::bind(&socket, &lock, Metrics::new()).unwrap();
        tokio::spawn(async move { axum::serve(listener, ipam_router(state)).await });
        let deep = format!("{}{}", "[".repeat(200_000), "]".repeat(200_000)).into_bytes();
        let deep_object = format!("{}1{}", "{\"a\":".repeat(100_000), "}".repeat(100_000)).into_bytes();
        let huge = vec![b'a'; 3 * 1024 * 1024];
        let numbers = br#"{"containerID":"c","ifName":"eth0","podNamespace":"ns","podName":1e999999999,"netName":18446744073709551616123}"#.to_vec();
        let not_utf8 = vec![b'{', b'"', 0xff, 0xfe, b'"', b':', b'1', b'}'];
        let wrong_types =
            br#"{"containerID":["x"],"ifName":{"a":1},"podNamespace":null,"podName":true}"#.to_vec();
        let chunked = b"POST /v1/ipam/ip HTTP/1.1\r\nhost: agent\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\nffffffffffffffffffffff\r\nabc\r\n0\r\n\r\n".to_vec();
        let mut requests: Vec<Vec<u8>> = [deep, deep_object, huge, numbers, not_utf8, wrong_types]
            .iter()
            .map(|body| post(body))
            .collect();
        requests.push(chunked);
        for request in requests {
            let socket = socket.clone();
            let status = tokio::task::spawn_blocking(move || raw(&socket, &request))
                .await
                .unwrap();
            assert!(status.starts_with("HTTP/1.1 4"), "unexpected answer {status:?}");
        }
        let socket_for_check = socket.clone();
        let healthy = tokio::task::spawn_blocking(move || {
            raw(
                &socket_for_check,
                format!(
                    "GET {} HTTP/1.1\r\nhost: agent\r\nconnection: close\r\n\r\n",
                    spiderpool_agent_api::PATH_HEALTHY
                )
                .as_bytes(),
            )
        })
        .await
        .unwrap();
        assert!(healthy.starts_with("HTTP/1.1 200"), "{healthy}");
    }

    #[tokio::test(start_paused = true)]
    async fn probes_follow_startup_stuck_writers_and_the_api_server() {
        let state = state();
        let status = |r: Response| r.status();
        assert_eq!(
            status(probe_startup(State(state.clone())).await),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            status(probe_readiness(State(state.clone())).await),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(status(probe_liveness(State(state.clone())).await), StatusCode::OK);
        state.health.set_started();
        assert_eq!(
            status(probe_readiness(State(state.clone())).await),
            StatusCode::OK
        );
        let _stuck = state.health.step("p", "writing the pool status");
        tokio::time::sleep(Duration::from_secs(31)).await;
        assert_eq!(
            status(probe_liveness(State(state.clone())).await),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            status(probe_readiness(State(state.clone())).await),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(status(probe_startup(State(state)).await), StatusCode::OK);
    }

    /// The plugin gives up on a slow ADD (its deadline is shorter than the daemon's) and closes the
    /// connection, which drops the handler's future: the ADD still finishes, so the DEL that follows
    /// finds the pod's endpoint and releases its address.
    #[tokio::test(start_paused = true)]
    async fn an_add_the_plugin_gave_up_on_still_finishes_and_the_del_that_follows_releases_it() {
        use crate::allocator::tests::{add_args, del_args, pod};
        use crate::api::fake::{CallKind, Fault};
        let (state, fake) = state_and_api();
        state.health.set_started();
        fake.put_pool(spiderpool_schema::SpiderIPPool::new(
            "p",
            spiderpool_schema::SpiderIPPoolSpec {
                subnet: "10.0.0.0/24".into(),
                ips: vec!["10.0.0.10-10.0.0.19".into()],
                ..Default::default()
            },
        ));
        fake.put_pod(pod("a", "uid-a", None));
        fake.fail(CallKind::WritePoolStatus, Fault::Delay(Duration::from_secs(2)), 1);
        let given_up = tokio::time::timeout(
            Duration::from_millis(500),
            add(State(state.clone()), Json(add_args("a", "uid-a", "c1"))),
        )
        .await;
        assert!(
            given_up.is_err(),
            "the ADD was meant to be slower than its caller"
        );
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(
            fake.endpoints().len(),
            1,
            "the ADD did not finish once its caller was gone"
        );

        assert_eq!(
            del(State(state), Json(del_args("a", "uid-a", "c1")))
                .await
                .status(),
            StatusCode::OK
        );
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(fake.endpoints().is_empty());
        let held: Vec<String> = fake
            .pool("p")
            .unwrap()
            .status
            .unwrap_or_default()
            .allocations()
            .unwrap()
            .into_iter()
            .filter(|(_, record)| record.pod_uid == "uid-a")
            .map(|(ip, _)| ip)
            .collect();
        assert!(held.is_empty(), "the pool still records {held:?} for the pod");
    }
}
