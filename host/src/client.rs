//! A typed client for the HTTP API, used by the CLI, the demo and tests.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// An API call that did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum ApiClientError {
    /// No answer: `url` is the node actually tried (after any redirect),
    /// `what` says how it failed, `detail` is the innermost cause.
    #[error("{what} {url}: {detail}")]
    Transport {
        url: String,
        what: &'static str,
        detail: String,
    },
    /// The node answered with an error document.
    #[error("{status} {code}: {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    #[error("unexpected response from {url}: {why}")]
    Decode { url: String, why: String },
    #[error("client credentials: {0}")]
    Credentials(String),
}

/// Parameters as the JSON object the API takes.
fn params_object(params: &[(String, String)]) -> serde_json::Map<String, Value> {
    params
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect()
}

/// Names the node that failed (a redirect's target, not the node first
/// asked) and the innermost cause once, not reqwest's nested repetition.
fn transport_error(url: &str, error: &reqwest::Error) -> ApiClientError {
    let url = error
        .url()
        .map_or_else(|| url.to_string(), |target| target.to_string());
    let what = if error.is_connect() {
        "cannot connect to"
    } else if error.is_timeout() {
        "no answer in time from"
    } else if error.is_redirect() {
        "too many redirects at"
    } else {
        "request failed at"
    };
    let mut cause: &dyn std::error::Error = error;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    ApiClientError::Transport {
        url,
        what,
        detail: cause.to_string(),
    }
}

impl ApiClientError {
    pub fn status(&self) -> Option<u16> {
        match self {
            ApiClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    pub fn code(&self) -> Option<&str> {
        match self {
            ApiClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// Outcome of a compare-and-swap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CasOutcome {
    pub succeeded: bool,
    pub current: Option<String>,
}

/// What a client presents to a secured node: the CA bundle it trusts
/// (PEM) and its bearer token. [`Credentials::none`] talks plain HTTP.
#[derive(Clone, Default)]
pub struct Credentials {
    pub ca_pem: Option<Vec<u8>>,
    pub token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token itself.
        f.debug_struct("Credentials")
            .field("ca_pem", &self.ca_pem.as_ref().map(Vec::len))
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Credentials {
    pub fn none() -> Self {
        Self::default()
    }

    /// The CA bundle at `ca` and `token`.
    pub fn new(ca: &std::path::Path, token: &str) -> std::io::Result<Self> {
        Ok(Self {
            ca_pem: Some(std::fs::read(ca)?),
            token: Some(token.to_string()),
        })
    }

    /// A profile file written by `synod cluster init`.
    pub fn from_profile(path: &std::path::Path) -> Result<Self, ApiClientError> {
        let profile = crate::security::init::Profile::load(path)
            .map_err(|e| ApiClientError::Credentials(format!("profile {}: {e}", path.display())))?;
        Self::new(&profile.ca, &profile.token).map_err(|e| {
            ApiClientError::Credentials(format!("CA bundle {}: {e}", profile.ca.display()))
        })
    }

    /// `http://` or `https://`, as these credentials talk.
    pub fn scheme(&self) -> &'static str {
        if self.ca_pem.is_some() {
            "https"
        } else {
            "http"
        }
    }
}

/// Redirects a client follows before giving up.
const REDIRECTS_MAX: usize = 10;

#[derive(Clone)]
pub struct ApiClient {
    base: String,
    http: reqwest::Client,
    token: Option<String>,
    follow_redirects: bool,
    credentials: Credentials,
}

impl ApiClient {
    /// `base` like `http://127.0.0.1:7070`.
    pub fn new(base: &str) -> Self {
        Self::with_pool(base, 64)
    }

    /// A client keeping up to `idle_connections` open (one per concurrent
    /// caller avoids reconnecting under heavy load).
    pub fn with_pool(base: &str, idle_connections: usize) -> Self {
        Self::build(base, idle_connections, true, &Credentials::none())
            .unwrap_or_else(|_| Self::fallback(base, true))
    }

    /// A client that reports a redirect (as an `Api` error with status
    /// 307) instead of following it: to ask one node about its own replica.
    pub fn without_redirects(base: &str) -> Self {
        Self::build(base, 64, false, &Credentials::none())
            .unwrap_or_else(|_| Self::fallback(base, false))
    }

    /// A client presenting `credentials` (TLS with their CA, their token).
    pub fn secure(base: &str, credentials: &Credentials) -> Result<Self, ApiClientError> {
        Self::build(base, 64, true, credentials)
    }

    /// [`ApiClient::secure`] with a pool size.
    pub fn secure_with_pool(
        base: &str,
        idle_connections: usize,
        credentials: &Credentials,
    ) -> Result<Self, ApiClientError> {
        Self::build(base, idle_connections, true, credentials)
    }

    /// [`ApiClient::without_redirects`] presenting `credentials`.
    pub fn secure_without_redirects(
        base: &str,
        credentials: &Credentials,
    ) -> Result<Self, ApiClientError> {
        Self::build(base, 64, false, credentials)
    }

    fn fallback(base: &str, follow_redirects: bool) -> Self {
        Self {
            base: base.trim_end_matches('/').to_string(),
            http: reqwest::Client::new(),
            token: None,
            follow_redirects,
            credentials: Credentials::none(),
        }
    }

    /// Redirects are followed here, not by reqwest: reqwest drops the
    /// `Authorization` header on a redirect to another port.
    fn build(
        base: &str,
        idle_connections: usize,
        follow_redirects: bool,
        credentials: &Credentials,
    ) -> Result<Self, ApiClientError> {
        let timeout = if follow_redirects { 30 } else { 10 };
        let mut builder = reqwest::Client::builder()
            .timeout(Duration::from_secs(timeout))
            .pool_max_idle_per_host(idle_connections)
            .redirect(reqwest::redirect::Policy::none());
        if let Some(ca) = &credentials.ca_pem {
            let config = crate::security::tls::client_config(ca)
                .map_err(|e| ApiClientError::Credentials(e.to_string()))?;
            builder = builder.use_preconfigured_tls((*config).clone());
        }
        let http = builder
            .build()
            .map_err(|e| ApiClientError::Credentials(e.to_string()))?;
        Ok(Self {
            base: base.trim_end_matches('/').to_string(),
            http,
            token: credentials.token.clone(),
            follow_redirects,
            credentials: credentials.clone(),
        })
    }

    /// A client of another node (`host:port`) with the same credentials,
    /// reporting redirects instead of following them.
    pub fn sibling_without_redirects(&self, api: &str) -> Result<Self, ApiClientError> {
        let base = format!("{}://{api}", self.credentials.scheme());
        Self::build(&base, 64, false, &self.credentials)
    }

    /// The credentials this client presents.
    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn send<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
        url: String,
    ) -> Result<T, ApiClientError> {
        let mut request = request
            .build()
            .map_err(|source| transport_error(&url, &source))?;
        let mut url = url;
        let mut redirects = 0;
        let response = loop {
            if let Some(token) = &self.token
                && let Ok(value) = format!("Bearer {token}").parse()
            {
                request
                    .headers_mut()
                    .insert(reqwest::header::AUTHORIZATION, value);
            }
            let again = request.try_clone();
            let response = self
                .http
                .execute(request)
                .await
                .map_err(|source| transport_error(&url, &source))?;
            let location = response
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .and_then(|l| reqwest::Url::parse(l).ok());
            match (response.status(), location, again) {
                (reqwest::StatusCode::TEMPORARY_REDIRECT, Some(next), Some(mut again))
                    if self.follow_redirects =>
                {
                    redirects += 1;
                    if redirects > REDIRECTS_MAX {
                        return Err(ApiClientError::Transport {
                            url: next.to_string(),
                            what: "too many redirects at",
                            detail: format!("{REDIRECTS_MAX} redirects"),
                        });
                    }
                    url = next.to_string();
                    *again.url_mut() = next;
                    request = again;
                }
                _ => break response,
            }
        };
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|source| transport_error(&url, &source))?;
        if !status.is_success() {
            let document: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let error = &document["error"];
            return Err(ApiClientError::Api {
                status: status.as_u16(),
                code: error["code"].as_str().unwrap_or("unknown").to_string(),
                message: error["message"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned()),
            });
        }
        serde_json::from_slice(&body).map_err(|e| ApiClientError::Decode {
            url,
            why: e.to_string(),
        })
    }

    async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, ApiClientError> {
        let url = self.url(path);
        self.send(self.http.get(&url), url).await
    }

    async fn post_json<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &Value,
    ) -> Result<T, ApiClientError> {
        let url = self.url(path);
        self.send(self.http.post(&url).json(body), url).await
    }

    fn key_path(region: &str, key: &str) -> String {
        format!("/v1/regions/{}/kv/{}", encode(region), encode(key))
    }

    pub async fn status(&self) -> Result<Value, ApiClientError> {
        self.get_json("/v1/status").await
    }

    pub async fn create_region(
        &self,
        name: &str,
        protocol: &str,
        params: &[(String, String)],
    ) -> Result<Value, ApiClientError> {
        let params = params_object(params);
        self.post_json(
            "/v1/regions",
            &json!({ "name": name, "protocol": protocol, "params": params }),
        )
        .await
    }

    /// Creates a region on the given replicas (None: every known node).
    pub async fn create_region_on(
        &self,
        name: &str,
        protocol: &str,
        params: &[(String, String)],
        replicas: Option<&[u64]>,
    ) -> Result<Value, ApiClientError> {
        let params = params_object(params);
        self.post_json(
            "/v1/regions",
            &json!({ "name": name, "protocol": protocol, "params": params, "replicas": replicas }),
        )
        .await
    }

    /// Asks the region's leader to move to this membership.
    pub async fn change_membership(
        &self,
        region: &str,
        voters: &[u64],
        learners: &[u64],
    ) -> Result<Value, ApiClientError> {
        self.post_json(
            &format!("/v1/regions/{}/membership", encode(region)),
            &json!({ "voters": voters, "learners": learners }),
        )
        .await
    }

    /// Moves a replica of `region` from node `from` to node `to` (add,
    /// catch up, remove; `from` then deletes its data).
    pub async fn move_replica(
        &self,
        region: &str,
        from: u64,
        to: u64,
    ) -> Result<Value, ApiClientError> {
        self.post_json(
            &format!("/v1/regions/{}/move", encode(region)),
            &json!({ "from": from, "to": to }),
        )
        .await
    }

    pub async fn transfer_leader(
        &self,
        region: &str,
        target: Option<u64>,
    ) -> Result<Value, ApiClientError> {
        self.post_json(
            &format!("/v1/regions/{}/transfer-leader", encode(region)),
            &json!({ "target": target }),
        )
        .await
    }

    pub async fn cluster(&self) -> Result<Value, ApiClientError> {
        self.get_json("/v1/cluster").await
    }

    pub async fn add_node(&self, id: u64, api: &str, peer: &str) -> Result<Value, ApiClientError> {
        self.post_json(
            "/v1/cluster/nodes",
            &json!({ "id": id, "api": api, "peer": peer }),
        )
        .await
    }

    pub async fn regions(&self) -> Result<Value, ApiClientError> {
        self.get_json("/v1/regions").await
    }

    pub async fn region_status(&self, region: &str) -> Result<Value, ApiClientError> {
        self.get_json(&format!("/v1/regions/{}", encode(region)))
            .await
    }

    /// Creates a region with `count` replicas on the least loaded nodes.
    pub async fn create_region_counted(
        &self,
        name: &str,
        protocol: &str,
        params: &[(String, String)],
        count: usize,
    ) -> Result<Value, ApiClientError> {
        let params = params_object(params);
        self.post_json(
            "/v1/regions",
            &json!({ "name": name, "protocol": protocol, "params": params, "replica_count": count }),
        )
        .await
    }

    /// Deletes a region; waits up to `wait` for every host to delete its
    /// data (`deleted: false` and `pending` hosts when they have not).
    pub async fn delete_region(
        &self,
        region: &str,
        wait: Duration,
    ) -> Result<Value, ApiClientError> {
        let url = self.url(&format!(
            "/v1/regions/{}?wait_ms={}",
            encode(region),
            wait.as_millis()
        ));
        let request = self
            .http
            .delete(&url)
            .timeout(wait + Duration::from_secs(30));
        self.send(request, url).await
    }

    /// The region as the control plane records it: epochs, any swap in
    /// progress (and what it waits for), its audit lines.
    pub async fn region_record(&self, region: &str) -> Result<Value, ApiClientError> {
        self.get_json(&format!("/v1/regions/{}/record", encode(region)))
            .await
    }

    /// Swaps a live region to `to` and waits up to `wait` for the outcome.
    pub async fn swap_region(
        &self,
        region: &str,
        to: &str,
        params: Option<&[(String, String)]>,
        replicas: Option<&[u64]>,
        force: bool,
        wait: Duration,
    ) -> Result<Value, ApiClientError> {
        let params = params.map(params_object);
        let url = self.url(&format!("/v1/regions/{}/swap", encode(region)));
        let body = json!({
            "to": to,
            "params": params,
            "replicas": replicas,
            "force": force,
            "wait_ms": wait.as_millis() as u64,
        });
        let request = self
            .http
            .post(&url)
            .json(&body)
            .timeout(wait + Duration::from_secs(30));
        self.send(request, url).await
    }

    pub async fn restart_region(&self, region: &str) -> Result<Value, ApiClientError> {
        self.post_json(
            &format!("/v1/regions/{}/restart", encode(region)),
            &json!({}),
        )
        .await
    }

    pub async fn put(&self, region: &str, key: &str, value: &str) -> Result<(), ApiClientError> {
        let url = self.url(&Self::key_path(region, key));
        let _: Value = self
            .send(self.http.put(&url).json(&json!({ "value": value })), url)
            .await?;
        Ok(())
    }

    /// Writes a key; returns the `(time, origin)` stamp a last-writer-wins
    /// protocol gave the write (`None` for ordered protocols).
    pub async fn put_stamped(
        &self,
        region: &str,
        key: &str,
        value: &str,
    ) -> Result<Option<(u64, u64)>, ApiClientError> {
        let url = self.url(&Self::key_path(region, key));
        let body: Value = self
            .send(self.http.put(&url).json(&json!({ "value": value })), url)
            .await?;
        let stamp = &body["stamp"];
        Ok(stamp["time"].as_u64().zip(stamp["origin"].as_u64()))
    }

    /// Reads a key at `consistency` (linearizable, lease or local).
    pub async fn get(
        &self,
        region: &str,
        key: &str,
        consistency: &str,
    ) -> Result<Option<String>, ApiClientError> {
        let path = format!(
            "{}?consistency={}",
            Self::key_path(region, key),
            encode(consistency)
        );
        let body: Value = self.get_json(&path).await?;
        Ok(body["value"].as_str().map(str::to_string))
    }

    /// Deletes a key; returns whether it existed.
    pub async fn delete(&self, region: &str, key: &str) -> Result<bool, ApiClientError> {
        let url = self.url(&Self::key_path(region, key));
        let body: Value = self.send(self.http.delete(&url), url).await?;
        Ok(body["deleted"].as_bool().unwrap_or(false))
    }

    pub async fn cas(
        &self,
        region: &str,
        key: &str,
        expected: Option<&str>,
        new: Option<&str>,
    ) -> Result<CasOutcome, ApiClientError> {
        let body: Value = self
            .post_json(
                &format!("/v1/regions/{}/cas", encode(region)),
                &json!({ "key": key, "expected": expected, "new": new }),
            )
            .await?;
        Ok(CasOutcome {
            succeeded: body["succeeded"].as_bool().unwrap_or(false),
            current: body["current"].as_str().map(str::to_string),
        })
    }

    pub async fn publish_component(&self, bytes: Vec<u8>) -> Result<Value, ApiClientError> {
        let url = self.url("/v1/components");
        self.send(
            self.http
                .post(&url)
                .header("content-type", "application/wasm")
                .body(bytes),
            url,
        )
        .await
    }

    pub async fn components(&self) -> Result<Value, ApiClientError> {
        self.get_json("/v1/components").await
    }

    /// Polls `/v1/status` until the node answers or `timeout` passes.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), ApiClientError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match self.status().await {
                Ok(_) => return Ok(()),
                Err(error) if tokio::time::Instant::now() >= deadline => return Err(error),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
}

/// Percent-encodes a path segment or query value.
fn encode(segment: &str) -> String {
    percent_encoding::utf8_percent_encode(segment, percent_encoding::NON_ALPHANUMERIC).to_string()
}
