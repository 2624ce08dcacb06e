//! The HTTP/JSON client and admin API.
//!
//! | method | path | what |
//! |---|---|---|
//! | GET | `/v1/status` | node status |
//! | GET, POST | `/v1/regions` | list / create (`{"name","protocol","params"}`) |
//! | GET | `/v1/regions/{region}` | region status |
//! | POST | `/v1/regions/{region}/restart` | rebuild a fenced or quarantined replica |
//! | GET, PUT, DELETE | `/v1/regions/{region}/kv/{key}` | read (`?consistency=`), write (`{"value"}`), delete |
//! | POST | `/v1/regions/{region}/cas` | compare-and-swap (`{"key","expected","new"}`) |
//! | GET, POST | `/v1/components` | list / publish (body: component bytes) |
//! | POST | `/v1/regions/{region}/membership` | move to `{"voters","learners"}` |
//! | POST | `/v1/regions/{region}/transfer-leader` | hand leadership to `{"target"}` |
//! | GET | `/v1/cluster` | nodes and regions this node knows |
//! | POST | `/v1/cluster/nodes` | announce a node (`{"id","api","peer"}`) |
//!
//! A replica that is not the leader answers `307` with the leader's URL in
//! `Location` (clients follow it; `curl -L`).
//!
//! Every error is `{"error": {"code", "message"}}` with a fitting status;
//! a refused request changed nothing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::OriginalUri;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use synod_guest_sdk::{Membership, NodeId, ReadLevel, Rejection};

use crate::plugin::{Call, CallResult};

use crate::control::ControlError;
use crate::node::{Node, NodeError, Placement};
use crate::region::MembershipTarget;
use crate::region::driver::ClientError;
use crate::state_machine::{KvCommand, KvOutcome, KvQuery};

/// Largest component accepted by `POST /v1/components`.
pub const COMPONENT_BYTES_MAX: usize = 64 << 20;

/// Largest body of a key-value write (`PUT .../kv/...`, `POST .../cas`):
/// room for the largest value twice (a cas), JSON-escaped.
pub const KV_BODY_BYTES_MAX: usize = 8 << 20;

/// Largest body of the small admin routes (membership, move, leader
/// transfer, restart, cluster nodes).
pub const SMALL_BODY_BYTES_MAX: usize = 64 << 10;

/// Largest body of `POST /v1/regions`: room for the largest params
/// ([`crate::region::spec_limits::REGION_PARAMS_BYTES_MAX`]) even when JSON escapes
/// them, and no more.
pub const REGION_BODY_BYTES_MAX: usize = 1 << 20;

/// Caps and timeouts of the API port (HTTP and the wire protocol); `[api]`
/// in the configuration file. Worst-case memory held for clients is about
/// `connections_max × (wire_in_flight_bytes_max + one frame)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Open connections on the API port, HTTP and wire together; more are
    /// closed at once (counted in `api.connections_refused`).
    pub connections_max: usize,
    /// Time a connection has to deliver a request's head, counted from
    /// when it starts waiting for one: on a new connection and after each
    /// response. So it is also the keep-alive idle timeout.
    pub http_header_timeout: Duration,
    /// Time a wire connection has to complete a frame once its first byte
    /// has arrived.
    pub wire_frame_timeout: Duration,
    /// A wire connection with no request in flight and no bytes for this
    /// long is closed.
    pub wire_idle_timeout: Duration,
    /// Bytes of wire requests accepted but not yet answered, per
    /// connection; the node stops reading from a connection at the bound.
    pub wire_in_flight_bytes_max: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            connections_max: 1024,
            http_header_timeout: Duration::from_secs(20),
            wire_frame_timeout: Duration::from_secs(10),
            wire_idle_timeout: Duration::from_secs(300),
            wire_in_flight_bytes_max: 16 << 20,
        }
    }
}

/// Connection counters of the API port.
#[derive(Debug, Default)]
pub struct ApiCounters {
    pub connections_open: AtomicU64,
    pub connections_refused: AtomicU64,
    /// Wire connections closed for a frame not completed in time, or idle.
    pub wire_timeouts: AtomicU64,
    /// The most request bytes one wire connection had in flight at once.
    pub wire_in_flight_bytes_peak: AtomicU64,
}

/// What `GET /v1/status` shows of the API port.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ApiStats {
    pub connections_open: u64,
    pub connections_refused: u64,
    pub wire_timeouts: u64,
    pub wire_in_flight_bytes_peak: u64,
}

impl ApiCounters {
    pub fn stats(&self) -> ApiStats {
        ApiStats {
            connections_open: self.connections_open.load(Ordering::Relaxed),
            connections_refused: self.connections_refused.load(Ordering::Relaxed),
            wire_timeouts: self.wire_timeouts.load(Ordering::Relaxed),
            wire_in_flight_bytes_peak: self.wire_in_flight_bytes_peak.load(Ordering::Relaxed),
        }
    }
}

/// An API error: status, stable machine code, human message.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Set on redirects (307) to the node that can serve the request.
    pub location: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            location: None,
        }
    }

    /// 307 to the same path on another node; clients re-send there.
    fn redirect(from: &Node, node: NodeId, api: &str, uri: &axum::http::Uri, why: &str) -> Self {
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let mut error = Self::new(
            StatusCode::TEMPORARY_REDIRECT,
            "redirect",
            format!("{why}; redirecting to node {node}"),
        );
        let scheme = if from.config().security.is_some() {
            "https"
        } else {
            "http"
        };
        error.location = Some(format!("{scheme}://{api}{path}"));
        error
    }

    fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": { "code": self.code, "message": self.message } });
        let mut response = (self.status, Json(body)).into_response();
        if let Some(location) = self.location
            && let Ok(value) = axum::http::HeaderValue::from_str(&location)
        {
            response
                .headers_mut()
                .insert(axum::http::header::LOCATION, value);
        }
        response
    }
}

impl From<NodeError> for ApiError {
    fn from(error: NodeError) -> Self {
        let message = error.to_string();
        match error {
            NodeError::UnknownRegion(_) => {
                Self::new(StatusCode::NOT_FOUND, "region_not_found", message)
            }
            NodeError::RegionExists(_) => Self::new(StatusCode::CONFLICT, "region_exists", message),
            NodeError::InvalidName(_) => Self::bad_request("invalid_region_name", message),
            NodeError::UnknownProtocol(_) => Self::bad_request("unknown_protocol", message),
            NodeError::Component(_) => Self::bad_request("invalid_component", message),
            NodeError::Invalid(_) => Self::bad_request("invalid_request", message),
            NodeError::SpecTooLarge(ref too_large) => {
                Self::new(StatusCode::PAYLOAD_TOO_LARGE, too_large.code(), message)
            }
            NodeError::Control(ref control) => control_error(control, message),
            NodeError::Storage(_)
            | NodeError::Journal(_)
            | NodeError::Engine(_)
            | NodeError::MissingComponent { .. }
            | NodeError::Snapshot { .. } => {
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
            }
        }
    }
}

/// A control-plane failure as an API error, with the record's stable code.
fn control_error(error: &ControlError, message: String) -> ApiError {
    match error {
        ControlError::Refused { code, .. } => {
            let (status, code) = match code.as_str() {
                "unknown_region" => (StatusCode::NOT_FOUND, "region_not_found"),
                "region_exists" => (StatusCode::CONFLICT, "region_exists"),
                "swap_in_progress" => (StatusCode::CONFLICT, "swap_in_progress"),
                "conflict" => (StatusCode::CONFLICT, "conflict"),
                "stale" => (StatusCode::CONFLICT, "stale"),
                "unknown_node" => (StatusCode::BAD_REQUEST, "unknown_node"),
                "unknown_component" => (StatusCode::BAD_REQUEST, "unknown_protocol"),
                "invalid_membership" => (StatusCode::BAD_REQUEST, "invalid_membership"),
                "invalid_region_name" => (StatusCode::BAD_REQUEST, "invalid_region_name"),
                "too_many_params" => (StatusCode::PAYLOAD_TOO_LARGE, "too_many_params"),
                "params_too_large" => (StatusCode::PAYLOAD_TOO_LARGE, "params_too_large"),
                "too_many_replicas" => (StatusCode::PAYLOAD_TOO_LARGE, "too_many_replicas"),
                "node_full" => (StatusCode::SERVICE_UNAVAILABLE, "node_full"),
                _ => (StatusCode::CONFLICT, "refused"),
            };
            ApiError::new(status, code, message)
        }
        ControlError::NoLeader(_) | ControlError::Stopped => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_control_leader",
            message,
        ),
        ControlError::Storage(_) => {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
        }
    }
}

impl From<ClientError> for ApiError {
    fn from(error: ClientError) -> Self {
        let message = error.to_string();
        match error {
            ClientError::Rejected(Rejection::NotLeader(hint)) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_leader",
                match hint {
                    Some(leader) => format!("this replica is not the leader; try node {leader}"),
                    None => "this replica is not the leader and knows no leader yet".into(),
                },
            ),
            ClientError::Rejected(Rejection::Sealed) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "sealed",
                "the region's protocol is sealed (a swap is in progress); retry",
            ),
            ClientError::Rejected(Rejection::Overloaded) | ClientError::Overloaded(_) => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", message)
            }
            ClientError::Rejected(Rejection::Invalid(why)) => {
                Self::bad_request("invalid_request", why)
            }
            ClientError::Rejected(Rejection::Unavailable(why)) => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", why)
            }
            ClientError::Unavailable(_) | ClientError::Stopped => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
            }
            ClientError::Timeout(_) => Self::new(StatusCode::GATEWAY_TIMEOUT, "timeout", message),
        }
    }
}

/// The local replica of `region`, or a redirect to a node hosting one.
async fn region_here(
    node: &Node,
    region: &str,
    uri: &axum::http::Uri,
) -> Result<crate::region::driver::RegionHandle, ApiError> {
    match node.region(region).await {
        Ok(handle) => Ok(handle),
        Err(error) => match node.region_host_elsewhere_agreed(region).await {
            Some((id, api)) => Err(ApiError::redirect(
                node,
                id,
                &api,
                uri,
                "region not hosted here",
            )),
            None => Err(error.into()),
        },
    }
}

/// Maps a client error, redirecting `not leader` to the leader when known.
fn client_failure(node: &Node, error: ClientError, uri: &axum::http::Uri) -> ApiError {
    if let ClientError::Rejected(Rejection::NotLeader(Some(leader))) = &error
        && *leader != node.config().node_id
        && let Some(api) = node.api_address_of(*leader)
    {
        return ApiError::redirect(node, *leader, &api, uri, "this replica is not the leader");
    }
    error.into()
}

fn json_body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    body.map(|Json(value)| value).map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("request body: {}", rejection.body_text()),
            );
        }
        ApiError::bad_request(
            "malformed_json",
            format!("request body: {}", rejection.body_text()),
        )
    })
}

/// The router over a running node.
pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/v1/status", get(node_status))
        .route("/v1/metrics", get(metrics))
        .route("/metrics", get(metrics))
        .route(
            "/v1/regions",
            get(list_regions)
                .post(create_region)
                .layer(DefaultBodyLimit::max(REGION_BODY_BYTES_MAX)),
        )
        .route(
            "/v1/regions/{region}",
            get(region_status).delete(delete_region),
        )
        .route("/v1/regions/{region}/record", get(region_record))
        .route(
            "/v1/regions/{region}/swap",
            post(swap_region).layer(DefaultBodyLimit::max(REGION_BODY_BYTES_MAX)),
        )
        .route(
            "/v1/regions/{region}/restart",
            post(restart_region).layer(DefaultBodyLimit::max(SMALL_BODY_BYTES_MAX)),
        )
        .route(
            "/v1/regions/{region}/kv/{*key}",
            get(get_key)
                .put(put_key)
                .delete(delete_key)
                .layer(DefaultBodyLimit::max(KV_BODY_BYTES_MAX)),
        )
        .route(
            "/v1/regions/{region}/cas",
            post(cas).layer(DefaultBodyLimit::max(KV_BODY_BYTES_MAX)),
        )
        .route(
            "/v1/regions/{region}/membership",
            post(change_membership).layer(DefaultBodyLimit::max(SMALL_BODY_BYTES_MAX)),
        )
        .route(
            "/v1/regions/{region}/move",
            post(move_replica).layer(DefaultBodyLimit::max(SMALL_BODY_BYTES_MAX)),
        )
        .route(
            "/v1/regions/{region}/transfer-leader",
            post(transfer_leader).layer(DefaultBodyLimit::max(SMALL_BODY_BYTES_MAX)),
        )
        .route("/v1/cluster", get(cluster))
        .route(
            "/v1/cluster/nodes",
            post(add_node).layer(DefaultBodyLimit::max(SMALL_BODY_BYTES_MAX)),
        )
        .route(
            "/v1/components",
            get(list_components).post(publish_component),
        )
        .fallback(not_found)
        // Authentication and authorization come first: a refused request
        // never reaches a handler or has its body read.
        .layer(axum::middleware::from_fn_with_state(
            node.clone(),
            crate::security::http::authorize,
        ))
        .layer(axum::middleware::map_response(json_errors))
        .layer(DefaultBodyLimit::max(COMPONENT_BYTES_MAX))
        .with_state(node)
}

/// Serves the API, and the binary client protocol on the same port
/// ([`crate::wire`]), until `shutdown` resolves.
pub async fn serve(
    node: Arc<Node>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let header_timeout = node.config().connections.http_header_timeout;
    let mut listener = crate::wire::SharedPortListener::new(listener, node.clone())?;
    let router = router(node);
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept_http() => {
                let Some(connection) = accepted else { break };
                while connections.try_join_next().is_some() {}
                connections.spawn(serve_http(
                    connection,
                    router.clone(),
                    header_timeout,
                    stopping.clone(),
                ));
            }
        }
    }
    // Stop accepting (and end wire connections), then let HTTP
    // connections finish the request they are in.
    drop(listener);
    let _ = stop.send(true);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// Serves one HTTP/1.1 connection. hyper's header timer starts whenever
/// the connection waits for a request head, so it bounds both a slow
/// client (slowloris) and an idle keep-alive connection. A client that
/// does not take its response within the same time is closed too.
async fn serve_http(
    connection: crate::wire::HttpConnection,
    router: Router,
    header_timeout: Duration,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) {
    let crate::wire::HttpConnection {
        stream,
        remote,
        permit,
    } = connection;
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_timeout);
    let service = hyper_util::service::TowerToHyperService::new(router);
    let stream = WriteDeadline::new(stream, header_timeout);
    let connection = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
    let mut connection = std::pin::pin!(connection);
    let mut graceful = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%remote, %error, "HTTP connection ended");
                }
                break;
            }
            changed = stopping.changed(), if !graceful => {
                let _ = changed;
                graceful = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    }
    drop(permit);
}

/// Turns axum's own plain-text rejections (405, 413, undecodable paths)
/// into the API's JSON error shape, so every error reads the same way.
async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/json"));
    if status.is_success() || is_json {
        return response;
    }
    let code = match status {
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        status if status.is_client_error() => "bad_request",
        _ => "internal",
    };
    let body = axum::body::to_bytes(response.into_body(), 64 * 1024)
        .await
        .unwrap_or_default();
    let mut message = String::from_utf8_lossy(&body).trim().to_string();
    if message.is_empty() {
        message = status
            .canonical_reason()
            .unwrap_or("request failed")
            .to_string();
    }
    ApiError::new(status, code, message).into_response()
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint; see the API table in docs/API.md",
    )
}

async fn node_status(State(node): State<Arc<Node>>) -> Response {
    Json(node.status().await).into_response()
}

/// The Prometheus exposition of the node and the regions the caller may
/// see (a token limited to some region prefixes gets only those series).
async fn metrics(State(node): State<Arc<Node>>, caller: Caller) -> Result<Response, ApiError> {
    let mut scrape = crate::metrics::scrape(&node).await;
    scrape
        .regions
        .retain(|region| may_see(&caller, &region.name));
    let text = crate::metrics::render(scrape).map_err(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the metrics could not be rendered",
        )
    })?;
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            crate::metrics::CONTENT_TYPE,
        )],
        text,
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRegion {
    pub name: String,
    pub protocol: String,
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    /// Nodes holding a replica; default: every known node.
    #[serde(default)]
    pub replicas: Option<Vec<NodeId>>,
    /// How many replicas, placed on the least loaded nodes (instead of
    /// `replicas`).
    #[serde(default)]
    pub replica_count: Option<usize>,
}

/// Refuses parameters over the spec's size limits (413).
fn check_params(params: &BTreeMap<String, String>) -> Result<(), ApiError> {
    crate::region::spec_limits::check_params(
        params
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str())),
    )
    .map_err(|too_large| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            too_large.code(),
            too_large.to_string(),
        )
    })
}

async fn create_region(
    State(node): State<Arc<Node>>,
    body: Result<Json<CreateRegion>, JsonRejection>,
) -> Result<Response, ApiError> {
    let request = json_body(body)?;
    check_params(&request.params)?;
    let params = request.params.into_iter().collect();
    let placement = match (request.replicas, request.replica_count) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "invalid_request",
                "give either replicas or replica_count, not both",
            ));
        }
        (Some(nodes), None) => Placement::Nodes(nodes),
        (None, Some(count)) => Placement::Count(count),
        (None, None) => Placement::Default,
    };
    let spec = node
        .create_region_placed(&request.name, &request.protocol, params, placement)
        .await?;
    if spec.hosted_on(node.config().node_id) {
        let handle = node.wait_for_local_replica(&spec.name).await?;
        let status = handle.status().await?;
        return Ok((StatusCode::CREATED, Json(status)).into_response());
    }
    Ok((
        StatusCode::CREATED,
        Json(json!({ "name": spec.name, "spec": spec })),
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteParams {
    /// How long to wait for every host to delete its data (default 10 s).
    pub wait_ms: Option<u64>,
}

async fn delete_region(
    State(node): State<Arc<Node>>,
    Path(region): Path<String>,
    params: Result<Query<DeleteParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) =
        params.map_err(|r| ApiError::bad_request("invalid_query", r.body_text()))?;
    let wait = Duration::from_millis(params.wait_ms.unwrap_or(10_000).min(600_000));
    let pending = node.delete_region(&region, wait).await?;
    if pending.is_empty() {
        Ok(Json(json!({ "region": region, "deleted": true })).into_response())
    } else {
        Ok((
            StatusCode::ACCEPTED,
            Json(json!({
                "region": region,
                "deleted": false,
                "pending": pending,
                "message": "deletion recorded; these hosts delete their data when they are up",
            })),
        )
            .into_response())
    }
}

/// The region as the control plane records it: epochs, swap, phase.
async fn region_record(
    State(node): State<Arc<Node>>,
    Path(region): Path<String>,
) -> Result<Response, ApiError> {
    let record = node.region_record(&region).await?;
    let waiting = crate::swap::coordinator::waiting_for(&node, &record);
    let audit: Vec<_> = node
        .control()
        .local()
        .audit
        .iter()
        .filter(|a| {
            a.action.starts_with(&format!("region {region}:"))
                || a.action.contains(&format!("region {region} "))
        })
        .cloned()
        .collect();
    Ok(
        Json(json!({ "record": record, "swap_waiting_for": waiting, "audit": audit }))
            .into_response(),
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwapBody {
    /// Protocol to swap to: a component name (`raft`), `name@version`,
    /// `sha256:<digest>` or `native:<name>`.
    pub to: String,
    /// The new protocol's parameters (default: the region's `quota.*` ones).
    #[serde(default)]
    pub params: Option<BTreeMap<String, String>>,
    /// Members of the new epoch (default: the current ones, or one of them
    /// for a single-copy protocol).
    #[serde(default)]
    pub replicas: Option<Vec<NodeId>>,
    /// Proceed without every replica of an eventually consistent region.
    #[serde(default)]
    pub force: bool,
    /// How long to wait for the outcome (default 60 s).
    #[serde(default)]
    pub wait_ms: Option<u64>,
}

async fn swap_region(
    State(node): State<Arc<Node>>,
    Path(region): Path<String>,
    body: Result<Json<SwapBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let body = json_body(body)?;
    if let Some(params) = &body.params {
        check_params(params)?;
    }
    let wait = Duration::from_millis(body.wait_ms.unwrap_or(60_000).min(600_000));
    let params = body.params.map(|p| p.into_iter().collect());
    let outcome = node
        .swap_region(&region, &body.to, params, body.replicas, body.force, wait)
        .await?;
    let status = if outcome.done {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((status, Json(outcome)).into_response())
}

/// The caller's principal, when the node checks tokens.
type Caller = Option<axum::Extension<crate::security::Principal>>;

/// Whether the caller may see region `name` in a listing: a token limited
/// to some region prefixes sees only those regions.
fn may_see(caller: &Caller, name: &str) -> bool {
    caller.as_ref().is_none_or(|axum::Extension(principal)| {
        principal.may(&crate::security::Permission::Read(name.to_string()))
    })
}

async fn list_regions(State(node): State<Arc<Node>>, caller: Caller) -> Result<Response, ApiError> {
    let mut statuses = Vec::new();
    for region in node.regions().await {
        if may_see(&caller, region.name()) {
            statuses.push(region.status().await?);
        }
    }
    Ok(Json(json!({ "regions": statuses })).into_response())
}

async fn region_status(
    State(node): State<Arc<Node>>,
    Path(region): Path<String>,
    OriginalUri(uri): OriginalUri,
) -> Result<Response, ApiError> {
    let status = region_here(&node, &region, &uri).await?.status().await?;
    Ok(Json(status).into_response())
}

async fn restart_region(
    State(node): State<Arc<Node>>,
    Path(region): Path<String>,
) -> Result<Response, ApiError> {
    let handle = node.region(&region).await?;
    handle.restart().await?;
    Ok(Json(handle.status().await?).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadParams {
    pub consistency: Option<String>,
}

fn read_level(name: Option<&str>) -> Result<ReadLevel, ApiError> {
    match name.unwrap_or("linearizable") {
        "linearizable" => Ok(ReadLevel::Linearizable),
        "lease" => Ok(ReadLevel::Lease),
        "local" => Ok(ReadLevel::Local),
        other => Err(ApiError::bad_request(
            "invalid_consistency",
            format!("unknown consistency {other:?}: use linearizable, lease or local"),
        )),
    }
}

fn check_key(node: &Node, key: &str) -> Result<(), ApiError> {
    let max = node.config().key_bytes_max;
    if key.is_empty() {
        return Err(ApiError::bad_request("invalid_key", "the key is empty"));
    }
    if key.len() > max {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "key_too_large",
            format!("the key is {} bytes; the limit is {max}", key.len()),
        ));
    }
    Ok(())
}

fn check_value(node: &Node, value: &str) -> Result<(), ApiError> {
    let max = node.config().value_bytes_max;
    if value.len() > max {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "value_too_large",
            format!("the value is {} bytes; the limit is {max}", value.len()),
        ));
    }
    Ok(())
}

fn text(bytes: Option<serde_bytes::ByteBuf>) -> Option<String> {
    bytes.map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// A value as the API returns it.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ValueResponse {
    pub key: String,
    pub value: Option<String>,
}

async fn get_key(
    State(node): State<Arc<Node>>,
    Path((region, key)): Path<(String, String)>,
    OriginalUri(uri): OriginalUri,
    params: Result<Query<ReadParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) =
        params.map_err(|r| ApiError::bad_request("invalid_query", r.body_text()))?;
    let level = read_level(params.consistency.as_deref())?;
    check_key(&node, &key)?;
    let handle = region_here(&node, &region, &uri).await?;
    let query = KvQuery::Get {
        key: key.clone().into_bytes(),
    };
    let outcome = handle
        .read(&query, level, node.config().request_timeout)
        .await
        .map_err(|error| match error {
            ClientError::Timeout(after) => ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "timeout",
                format!(
                    "no answer within {after:?}; a read changes nothing, so it is safe to retry"
                ),
            ),
            other => client_failure(&node, other, &uri),
        })?;
    match outcome {
        KvOutcome::Value(value) => Ok(Json(ValueResponse {
            key,
            value: text(value),
        })
        .into_response()),
        other => Err(unexpected(other)),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutBody {
    pub value: String,
}

/// Orders a write through the local replica (or redirects to the leader).
async fn write(
    node: &Node,
    region: &str,
    uri: &axum::http::Uri,
    command: KvCommand,
) -> Result<KvOutcome, ApiError> {
    let handle = region_here(node, region, uri).await?;
    handle
        .write(&command, node.config().request_timeout)
        .await
        .map_err(|e| client_failure(node, e, uri))
}

async fn put_key(
    State(node): State<Arc<Node>>,
    Path((region, key)): Path<(String, String)>,
    OriginalUri(uri): OriginalUri,
    body: Result<Json<PutBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let body = json_body(body)?;
    check_key(&node, &key)?;
    check_value(&node, &body.value)?;
    let command = KvCommand::Put {
        key: key.clone().into_bytes(),
        value: body.value.into_bytes(),
    };
    match write(&node, &region, &uri, command).await? {
        KvOutcome::Written => Ok(Json(json!({ "key": key, "written": true })).into_response()),
        KvOutcome::WrittenStamped {
            time,
            origin,
            superseded,
        } => Ok(Json(json!({
            "key": key,
            "written": true,
            "stamp": { "time": time, "origin": origin },
            "superseded": superseded,
        }))
        .into_response()),
        other => Err(unexpected(other)),
    }
}

async fn delete_key(
    State(node): State<Arc<Node>>,
    Path((region, key)): Path<(String, String)>,
    OriginalUri(uri): OriginalUri,
) -> Result<Response, ApiError> {
    check_key(&node, &key)?;
    let command = KvCommand::Delete {
        key: key.clone().into_bytes(),
    };
    match write(&node, &region, &uri, command).await? {
        KvOutcome::Deleted { existed } => {
            Ok(Json(json!({ "key": key, "deleted": existed })).into_response())
        }
        KvOutcome::DeletedStamped {
            existed,
            time,
            origin,
            superseded,
        } => Ok(Json(json!({
            "key": key,
            "deleted": existed,
            "stamp": { "time": time, "origin": origin },
            "superseded": superseded,
        }))
        .into_response()),
        other => Err(unexpected(other)),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CasBody {
    pub key: String,
    /// The value the key must hold; `null` means "must be absent".
    pub expected: Option<String>,
    /// The value to set; `null` deletes the key.
    pub new: Option<String>,
}

async fn cas(
    State(node): State<Arc<Node>>,
    Path(region): Path<String>,
    OriginalUri(uri): OriginalUri,
    body: Result<Json<CasBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let body = json_body(body)?;
    check_key(&node, &body.key)?;
    for value in [&body.expected, &body.new].into_iter().flatten() {
        check_value(&node, value)?;
    }
    let command = KvCommand::Cas {
        key: body.key.clone().into_bytes(),
        expected: body
            .expected
            .map(|v| serde_bytes::ByteBuf::from(v.into_bytes())),
        new: body.new.map(|v| serde_bytes::ByteBuf::from(v.into_bytes())),
    };
    match write(&node, &region, &uri, command).await? {
        KvOutcome::Cas { succeeded, current } => Ok(Json(json!({
            "key": body.key,
            "succeeded": succeeded,
            "current": text(current),
        }))
        .into_response()),
        other => Err(unexpected(other)),
    }
}

fn unexpected(outcome: KvOutcome) -> ApiError {
    match outcome {
        KvOutcome::Invalid(why) => ApiError::bad_request("invalid_request", why),
        other => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("unexpected outcome {other:?}"),
        ),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MembershipBody {
    pub voters: Vec<NodeId>,
    #[serde(default)]
    pub learners: Vec<NodeId>,
}

/// Redirects to the leader the local replica knows, if it is not itself.
async fn leader_redirect(
    node: &Node,
    handle: &crate::region::driver::RegionHandle,
    uri: &axum::http::Uri,
) -> Result<(), ApiError> {
    let status = handle.status().await?;
    if let Some(plugin) = status.plugin
        && let Some(leader) = plugin.leader
        && leader != node.config().node_id
        && let Some(api) = node.api_address_of(leader)
    {
        return Err(ApiError::redirect(
            node,
            leader,
            &api,
            uri,
            "this replica is not the leader",
        ));
    }
    Ok(())
}

fn unexpected_call(result: CallResult) -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        format!("unexpected plugin answer {result:?}"),
    )
}

async fn change_membership(
    State(node): State<Arc<Node>>,
    Path(region): Path<String>,
    OriginalUri(uri): OriginalUri,
    body: Result<Json<MembershipBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let body = json_body(body)?;
    request_membership(&node, &region, &uri, body.voters, body.learners).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MoveBody {
    /// The node whose replica moves away.
    pub from: NodeId,
    /// The node that gets it.
    pub to: NodeId,
}

/// Moves a replica: `to` joins (as a learner, catches up, becomes a voter),
/// then `from` leaves; once the protocol has committed that, `from` is
/// retired and deletes its data.
async fn move_replica(
    State(node): State<Arc<Node>>,
    Path(region): Path<String>,
    OriginalUri(uri): OriginalUri,
    body: Result<Json<MoveBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let body = json_body(body)?;
    let record = node.region_record(&region).await?;
    let current = record.spec.membership_target.clone().map_or_else(
        || (record.spec.voters.clone(), Vec::new()),
        |t| (t.voters, t.learners),
    );
    let (mut voters, learners) = current;
    if !voters.contains(&body.from) {
        return Err(ApiError::bad_request(
            "invalid_membership",
            format!("node {} is not a voter of {region}", body.from),
        ));
    }
    if voters.contains(&body.to) {
        return Err(ApiError::bad_request(
            "invalid_membership",
            format!("node {} already holds a replica of {region}", body.to),
        ));
    }
    voters.retain(|id| *id != body.from);
    voters.push(body.to);
    voters.sort_unstable();
    request_membership(&node, &region, &uri, voters, learners).await
}

/// Asks the region's protocol (on its leader) for a new membership: named
/// nodes that host no replica get one first (as learners in the record);
/// the target is recorded so a later leader is asked again, and the hosts
/// shrink to it once the protocol has committed it.
async fn request_membership(
    node: &Arc<Node>,
    region: &str,
    uri: &axum::http::Uri,
    voters: Vec<NodeId>,
    learners: Vec<NodeId>,
) -> Result<Response, ApiError> {
    if voters.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_membership",
            "voters must not be empty",
        ));
    }
    let known = node.control().local().nodes.clone();
    if let Some(unknown) = voters
        .iter()
        .chain(learners.iter())
        .find(|id| !known.contains_key(id))
    {
        return Err(ApiError::bad_request(
            "invalid_membership",
            format!(
                "node {unknown} is not part of the cluster; add it with POST /v1/cluster/nodes"
            ),
        ));
    }
    let handle = region_here(node, region, uri).await?;
    leader_redirect(node, &handle, uri).await?;
    // Every node named must host a replica before the protocol adds it.
    let record = node.region_record(region).await?;
    let hosts: Vec<NodeId> = record.spec.voters.clone();
    let mut host_learners: Vec<NodeId> = record.spec.learners.clone();
    for id in voters.iter().chain(learners.iter()) {
        if !hosts.contains(id) && !host_learners.contains(id) {
            host_learners.push(*id);
        }
    }
    if host_learners != record.spec.learners {
        node.set_region_members(
            region,
            hosts.clone(),
            host_learners.clone(),
            record.spec.membership_target.clone(),
        )
        .await?;
    }
    let target = Membership { voters, learners };
    match handle.control(Call::Membership(target.clone())).await? {
        CallResult::Membership(Ok(())) => {
            // Remembered in the record, so a later leader is asked again.
            node.set_region_members(
                region,
                hosts,
                host_learners,
                Some(MembershipTarget {
                    voters: target.voters,
                    learners: target.learners,
                }),
            )
            .await?;
            Ok(Json(handle.status().await?).into_response())
        }
        CallResult::Membership(Err(why)) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "membership_refused",
            why,
        )),
        other => Err(unexpected_call(other)),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferBody {
    #[serde(default)]
    pub target: Option<NodeId>,
}

async fn transfer_leader(
    State(node): State<Arc<Node>>,
    Path(region): Path<String>,
    OriginalUri(uri): OriginalUri,
    body: Result<Json<TransferBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let body = json_body(body)?;
    let handle = region_here(&node, &region, &uri).await?;
    leader_redirect(&node, &handle, &uri).await?;
    match handle.control(Call::TransferLeader(body.target)).await? {
        CallResult::TransferLeader(Ok(())) => {
            Ok(Json(json!({ "transferring": true, "target": body.target })).into_response())
        }
        CallResult::TransferLeader(Err(why)) => {
            Err(ApiError::new(StatusCode::CONFLICT, "transfer_refused", why))
        }
        other => Err(unexpected_call(other)),
    }
}

async fn cluster(State(node): State<Arc<Node>>, caller: Caller) -> Result<Response, ApiError> {
    let mut view = node.cluster().await?;
    view.regions.retain(|name, _| may_see(&caller, name));
    Ok(Json(view).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddNodeBody {
    pub id: NodeId,
    pub api: String,
    pub peer: String,
}

async fn add_node(
    State(node): State<Arc<Node>>,
    body: Result<Json<AddNodeBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let body = json_body(body)?;
    for (what, address) in [("api", &body.api), ("peer", &body.peer)] {
        if address.parse::<std::net::SocketAddr>().is_err() {
            return Err(ApiError::bad_request(
                "invalid_address",
                format!("{what} {address:?} is not host:port"),
            ));
        }
    }
    node.add_node(body.id, body.api, body.peer).await?;
    Ok((StatusCode::CREATED, Json(node.cluster().await?)).into_response())
}

async fn list_components(State(node): State<Arc<Node>>) -> Response {
    Json(json!({ "components": node.components() })).into_response()
}

async fn publish_component(
    State(node): State<Arc<Node>>,
    principal: Caller,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    if body.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_component",
            "the request body is empty; send the component's bytes",
        ));
    }
    // Compiling is CPU-heavy: keep it off the async workers.
    let stored = {
        let node = node.clone();
        tokio::task::spawn_blocking(move || node.store_component(&body))
            .await
            .map_err(|e| {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            })??
    };
    // The audit record names the token that published it.
    let mut stored = stored;
    stored.published_by_token = principal.map(|axum::Extension(p)| p.name);
    let summary = node.publish_record(stored).await?;
    Ok((StatusCode::CREATED, Json(summary)).into_response())
}

/// A stream whose writes fail with `TimedOut` once they have made no
/// progress for `timeout`: a client that never reads its responses cannot
/// hold a connection (and the response buffered for it) forever.
struct WriteDeadline<T> {
    inner: T,
    timeout: Duration,
    stalled: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl<T> WriteDeadline<T> {
    fn new(inner: T, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            stalled: None,
        }
    }

    /// Called when the inner write is pending: arms the timer on the first
    /// stall and fails once it fires.
    fn pending<R>(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<R>> {
        let timeout = self.timeout;
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match stalled.as_mut().poll(cx) {
            std::task::Poll::Ready(()) => std::task::Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("the client took no response bytes for {timeout:?}"),
            ))),
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    }

    fn progressed<R>(
        &mut self,
        result: std::task::Poll<std::io::Result<R>>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<R>> {
        match result {
            std::task::Poll::Pending => self.pending(cx),
            ready => {
                self.stalled = None;
                ready
            }
        }
    }
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for WriteDeadline<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for WriteDeadline<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let result = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        self.progressed(result, cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let result = std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.progressed(result, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let result = std::pin::Pin::new(&mut self.inner).poll_flush(cx);
        self.progressed(result, cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
