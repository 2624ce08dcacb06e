//! The HTTP API's gate: which permission each route needs, and the
//! middleware that checks the request's bearer token before the handler
//! (and before its body is read), so a refused request changes nothing.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::Permission;
use crate::api::ApiError;
use crate::node::Node;

/// The permission `method path` needs. Cluster-wide reads need any valid
/// token; region reads and writes need the region; everything that
/// changes the cluster (create, delete, swap, restart, membership, move,
/// leader transfer, nodes, publish) needs `admin`.
pub fn permission_for(method: &Method, path: &str) -> Permission {
    let segments: Vec<&str> = path
        .trim_start_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let region = |encoded: &str| {
        percent_encoding::percent_decode_str(encoded)
            .decode_utf8_lossy()
            .into_owned()
    };
    let read = method == Method::GET || method == Method::HEAD;
    match segments.as_slice() {
        ["v1", "status"]
        | ["v1", "metrics"]
        | ["metrics"]
        | ["v1", "cluster"]
        | ["v1", "components"]
        | ["v1", "regions"]
            if read =>
        {
            Permission::Any
        }
        ["v1", "regions", name] | ["v1", "regions", name, "record"] if read => {
            Permission::Read(region(name))
        }
        ["v1", "regions", name, "kv", ..] if read => Permission::Read(region(name)),
        ["v1", "regions", name, "kv", ..] if method == Method::PUT || method == Method::DELETE => {
            Permission::Write(region(name))
        }
        ["v1", "regions", name, "cas"] if method == Method::POST => Permission::Write(region(name)),
        // Unknown paths answer 404 to any valid token.
        _ if read => Permission::Any,
        _ => Permission::Admin,
    }
}

/// Most bytes and time spent discarding a refused request's body.
const DRAIN_BYTES_MAX: usize = crate::api::COMPONENT_BYTES_MAX;
const DRAIN_TIME_MAX: std::time::Duration = std::time::Duration::from_secs(5);

/// Reads and discards a refused request's body (bounded in bytes and
/// time, never buffered), so the client, still sending it, receives the
/// refusal instead of a reset connection.
async fn drain(request: Request) {
    use futures_util::StreamExt;
    let mut body = request.into_body().into_data_stream();
    let mut seen = 0usize;
    let discard = async {
        while let Some(Ok(chunk)) = body.next().await {
            seen += chunk.len();
            if seen > DRAIN_BYTES_MAX {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME_MAX, discard).await;
}

/// The bearer token of a request, if any.
fn bearer(request: &Request) -> Option<&str> {
    request
        .headers()
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// Checks the request's token against its route (nodes without security
/// let everything through) and hands the [`super::Principal`] to the
/// handler as an extension. Refusals: 401 (`unauthenticated`,
/// `invalid_token`, `token_expired`) or 403 (`forbidden`).
pub async fn authorize(
    State(node): State<Arc<Node>>,
    mut request: Request,
    next: Next,
) -> Response {
    let Some(security) = &node.config().security else {
        return next.run(request).await;
    };
    let permission = permission_for(request.method(), request.uri().path());
    match security.tokens.authorize(bearer(&request), &permission) {
        Ok(principal) => {
            request.extensions_mut().insert(principal);
            next.run(request).await
        }
        Err(error) => {
            let status = if error.is_forbidden() {
                StatusCode::FORBIDDEN
            } else {
                StatusCode::UNAUTHORIZED
            };
            tracing::info!(
                method = %request.method(),
                path = %request.uri().path(),
                code = error.code(),
                "refused an API request"
            );
            drain(request).await;
            ApiError::new(status, error.code(), error.to_string()).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_changing_route_needs_admin_and_data_routes_their_region() {
        let admin = [
            (Method::POST, "/v1/regions"),
            (Method::DELETE, "/v1/regions/r"),
            (Method::POST, "/v1/regions/r/swap"),
            (Method::POST, "/v1/regions/r/restart"),
            (Method::POST, "/v1/regions/r/membership"),
            (Method::POST, "/v1/regions/r/move"),
            (Method::POST, "/v1/regions/r/transfer-leader"),
            (Method::POST, "/v1/cluster/nodes"),
            (Method::POST, "/v1/components"),
        ];
        for (method, path) in admin {
            assert_eq!(permission_for(&method, path), Permission::Admin, "{path}");
        }
        let write = Permission::Write("a b".into());
        assert_eq!(
            permission_for(&Method::PUT, "/v1/regions/a%20b/kv/k"),
            write
        );
        assert_eq!(
            permission_for(&Method::DELETE, "/v1/regions/a%20b/kv/k/x"),
            write
        );
        assert_eq!(
            permission_for(&Method::POST, "/v1/regions/a%20b/cas"),
            write
        );
        let read = Permission::Read("r".into());
        assert_eq!(permission_for(&Method::GET, "/v1/regions/r/kv/k"), read);
        assert_eq!(permission_for(&Method::GET, "/v1/regions/r"), read);
        assert_eq!(permission_for(&Method::GET, "/v1/status"), Permission::Any);
        assert_eq!(permission_for(&Method::GET, "/metrics"), Permission::Any);
        assert_eq!(permission_for(&Method::GET, "/v1/metrics"), Permission::Any);
        assert_eq!(permission_for(&Method::POST, "/metrics"), Permission::Admin);
    }
}
