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
//!
//! Every error is `{"error": {"code", "message"}}` with a fitting status;
//! a refused request changed nothing.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use synod_guest_sdk::{ReadLevel, Rejection};

use crate::node::{Node, NodeError};
use crate::region::driver::ClientError;
use crate::state_machine::{KvCommand, KvOutcome, KvQuery};

/// Largest component accepted by `POST /v1/components`.
pub const COMPONENT_BYTES_MAX: usize = 64 << 20;

/// An API error: status, stable machine code, human message.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": { "code": self.code, "message": self.message } });
        (self.status, Json(body)).into_response()
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
        .route("/v1/regions", get(list_regions).post(create_region))
        .route("/v1/regions/{region}", get(region_status))
        .route("/v1/regions/{region}/restart", post(restart_region))
        .route(
            "/v1/regions/{region}/kv/{*key}",
            get(get_key).put(put_key).delete(delete_key),
        )
        .route("/v1/regions/{region}/cas", post(cas))
        .route(
            "/v1/components",
            get(list_components).post(publish_component),
        )
        .fallback(not_found)
        .layer(axum::middleware::map_response(json_errors))
        .layer(DefaultBodyLimit::max(COMPONENT_BYTES_MAX))
        .with_state(node)
}

/// Serves the API until `shutdown` resolves.
pub async fn serve(
    node: Arc<Node>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(node))
        .with_graceful_shutdown(shutdown)
        .await
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRegion {
    pub name: String,
    pub protocol: String,
    #[serde(default)]
    pub params: BTreeMap<String, String>,
}

async fn create_region(
    State(node): State<Arc<Node>>,
    body: Result<Json<CreateRegion>, JsonRejection>,
) -> Result<Response, ApiError> {
    let request = json_body(body)?;
    let params = request.params.into_iter().collect();
    let handle = node
        .create_region(&request.name, &request.protocol, params)
        .await?;
    let status = handle.status().await?;
    Ok((StatusCode::CREATED, Json(status)).into_response())
}

async fn list_regions(State(node): State<Arc<Node>>) -> Result<Response, ApiError> {
    let mut statuses = Vec::new();
    for region in node.regions().await {
        statuses.push(region.status().await?);
    }
    Ok(Json(json!({ "regions": statuses })).into_response())
}

async fn region_status(
    State(node): State<Arc<Node>>,
    Path(region): Path<String>,
) -> Result<Response, ApiError> {
    let status = node.region(&region).await?.status().await?;
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
    params: Result<Query<ReadParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) =
        params.map_err(|r| ApiError::bad_request("invalid_query", r.body_text()))?;
    let level = read_level(params.consistency.as_deref())?;
    check_key(&node, &key)?;
    let handle = node.region(&region).await?;
    let query = KvQuery::Get {
        key: key.clone().into_bytes(),
    };
    match handle
        .read(&query, level, node.config().request_timeout)
        .await?
    {
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

async fn put_key(
    State(node): State<Arc<Node>>,
    Path((region, key)): Path<(String, String)>,
    body: Result<Json<PutBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let body = json_body(body)?;
    check_key(&node, &key)?;
    check_value(&node, &body.value)?;
    let handle = node.region(&region).await?;
    let command = KvCommand::Put {
        key: key.clone().into_bytes(),
        value: body.value.into_bytes(),
    };
    match handle
        .write(&command, node.config().request_timeout)
        .await?
    {
        KvOutcome::Written => Ok(Json(json!({ "key": key, "written": true })).into_response()),
        other => Err(unexpected(other)),
    }
}

async fn delete_key(
    State(node): State<Arc<Node>>,
    Path((region, key)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    check_key(&node, &key)?;
    let handle = node.region(&region).await?;
    let command = KvCommand::Delete {
        key: key.clone().into_bytes(),
    };
    match handle
        .write(&command, node.config().request_timeout)
        .await?
    {
        KvOutcome::Deleted { existed } => {
            Ok(Json(json!({ "key": key, "deleted": existed })).into_response())
        }
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
    body: Result<Json<CasBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let body = json_body(body)?;
    check_key(&node, &body.key)?;
    for value in [&body.expected, &body.new].into_iter().flatten() {
        check_value(&node, value)?;
    }
    let handle = node.region(&region).await?;
    let command = KvCommand::Cas {
        key: body.key.clone().into_bytes(),
        expected: body
            .expected
            .map(|v| serde_bytes::ByteBuf::from(v.into_bytes())),
        new: body.new.map(|v| serde_bytes::ByteBuf::from(v.into_bytes())),
    };
    match handle
        .write(&command, node.config().request_timeout)
        .await?
    {
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

async fn list_components(State(node): State<Arc<Node>>) -> Response {
    Json(json!({ "components": node.components() })).into_response()
}

async fn publish_component(
    State(node): State<Arc<Node>>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    if body.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_component",
            "the request body is empty; send the component's bytes",
        ));
    }
    // Compiling is CPU-heavy: keep it off the async workers.
    let summary = tokio::task::spawn_blocking(move || node.publish(&body))
        .await
        .map_err(|e| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
        })??;
    Ok((StatusCode::CREATED, Json(summary)).into_response())
}
