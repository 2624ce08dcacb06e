//! Security on by default: tokens and roles on every HTTP route and on the
//! wire protocol, mutual TLS between nodes whose certificates bind their
//! ids, and a man-in-the-middle on loopback that sees no plaintext.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use synod::client::Credentials;
use synod::control::record::NodeRecord;
use synod::node::NodeConfig;
use synod::security::Role;
use synod::security::init;
use synod::transport::{Frame, TRANSPORT_VERSION};
use synod::wire::{Op, WireClient, WireClientError};
use synod_tests::{TestNode, free_port, secure};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const TIMEOUT: Duration = Duration::from_secs(10);

/// The tokens of a test cluster besides the admin's.
struct Tokens {
    admin: String,
    reader: String,
    writer: String,
    expired: String,
}

/// Secrets for nodes `ids` in `dir` with a reader, a writer of regions
/// `app-*` and an expired admin token.
fn secrets(dir: &Path, ids: &[u64]) -> Tokens {
    let made = init::init(dir, ids, &["127.0.0.1".to_string()]).expect("init");
    let past = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        - 10;
    Tokens {
        admin: made.admin_token,
        reader: init::add_token(dir, "reader", Role::Read, None, None).expect("token"),
        writer: init::add_token(dir, "app", Role::Write, Some(vec!["app-".into()]), None)
            .expect("token"),
        expired: init::add_token(dir, "old-admin", Role::Admin, None, Some(past)).expect("token"),
    }
}

async fn secure_single_node(dir: &Path) -> (TestNode, Tokens) {
    let tokens = secrets(&dir.join("secrets"), &[1]);
    let mut config = NodeConfig::new(1, dir.join("data"));
    let credentials = secure(&mut config, &dir.join("secrets"), &[1]).expect("security");
    let node = TestNode::start_secure(config, "127.0.0.1:0", &credentials)
        .await
        .expect("node");
    (node, tokens)
}

/// A raw HTTP client trusting the cluster's CA.
fn https_client(ca: &Path) -> reqwest::Client {
    let config = synod::security::tls::client_config(&std::fs::read(ca).expect("ca")).expect("tls");
    reqwest::Client::builder()
        .use_preconfigured_tls((*config).clone())
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// Everything a refused request could have changed.
async fn observable_state(node: &TestNode) -> Value {
    let client = &node.client;
    let regions: Vec<Value> = client.regions().await.expect("regions")["regions"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|r| serde_json::json!([r["name"], r["protocol"], r["state_machine"]["digest"]]))
        .collect();
    serde_json::json!({
        "regions": regions,
        "components": client.components().await.expect("components"),
        "nodes": client.cluster().await.expect("cluster")["nodes"],
        "k": client.get("app-data", "k", "linearizable").await.expect("get"),
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn every_route_refuses_missing_wrong_role_and_expired_tokens_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, tokens) = secure_single_node(dir.path()).await;
    node.client
        .create_region("app-data", "standalone", &[])
        .await
        .expect("the admin creates a region");
    node.client.put("app-data", "k", "v0").await.expect("put");
    let before = observable_state(&node).await;
    let http = https_client(&dir.path().join("secrets").join(init::CA_CERT));
    let base = node.client.base().to_string();
    let component = synod_plugin_artifacts::STANDALONE_WASM.to_vec();

    // (method, path, body, needs admin)
    let json = |v: Value| v.to_string().into_bytes();
    let routes: Vec<(&str, &str, Vec<u8>, bool)> = vec![
        (
            "POST",
            "/v1/regions",
            json(serde_json::json!({"name": "evil", "protocol": "standalone"})),
            true,
        ),
        ("DELETE", "/v1/regions/app-data", vec![], true),
        (
            "POST",
            "/v1/regions/app-data/swap",
            json(serde_json::json!({"to": "native:standalone"})),
            true,
        ),
        ("POST", "/v1/regions/app-data/restart", vec![], true),
        (
            "POST",
            "/v1/regions/app-data/membership",
            json(serde_json::json!({"voters": [1, 9]})),
            true,
        ),
        (
            "POST",
            "/v1/regions/app-data/move",
            json(serde_json::json!({"from": 1, "to": 9})),
            true,
        ),
        (
            "POST",
            "/v1/regions/app-data/transfer-leader",
            json(serde_json::json!({"target": 1})),
            true,
        ),
        (
            "POST",
            "/v1/cluster/nodes",
            json(serde_json::json!({"id": 2, "api": "10.0.0.9:1", "peer": "10.0.0.9:2"})),
            true,
        ),
        ("POST", "/v1/components", component, true),
        (
            "PUT",
            "/v1/regions/app-data/kv/k",
            json(serde_json::json!({"value": "evil"})),
            false,
        ),
        ("DELETE", "/v1/regions/app-data/kv/k", vec![], false),
        (
            "POST",
            "/v1/regions/app-data/cas",
            json(serde_json::json!({"key": "k", "expected": "v0", "new": "evil"})),
            false,
        ),
    ];
    let reads = [
        "/v1/status",
        "/metrics",
        "/v1/metrics",
        "/v1/cluster",
        "/v1/components",
        "/v1/regions",
        "/v1/regions/app-data",
        "/v1/regions/app-data/record",
        "/v1/regions/app-data/kv/k",
    ];
    let send = |method: &str, path: &str, body: Vec<u8>, token: Option<&str>| {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut request = http
            .request(method, format!("{base}{path}"))
            .header("content-type", "application/json")
            .body(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    let expect = |response: reqwest::Response, status: u16, code: &'static str, what: String| async move {
        assert_eq!(response.status().as_u16(), status, "{what}");
        let body: Value = response.json().await.expect("a JSON error");
        assert_eq!(body["error"]["code"], code, "{what}: {body}");
    };
    for (method, path, body, admin) in &routes {
        let attempts = [
            (None, 401, "unauthenticated"),
            (Some("synod_not-a-token"), 401, "invalid_token"),
            (Some(tokens.expired.as_str()), 401, "token_expired"),
            (Some(tokens.reader.as_str()), 403, "forbidden"),
        ];
        for (token, status, code) in attempts {
            let response = send(method, path, body.clone(), token).await.expect("sent");
            expect(
                response,
                status,
                code,
                format!("{method} {path} with {code}"),
            )
            .await;
        }
        if *admin {
            let response = send(method, path, body.clone(), Some(&tokens.writer))
                .await
                .expect("sent");
            expect(
                response,
                403,
                "forbidden",
                format!("{method} {path} as writer"),
            )
            .await;
        }
    }
    for path in reads {
        let attempts = [
            (None, "unauthenticated"),
            (Some("synod_not-a-token"), "invalid_token"),
            (Some(tokens.expired.as_str()), "token_expired"),
        ];
        for (token, code) in attempts {
            let response = send("GET", path, vec![], token).await.expect("sent");
            expect(response, 401, code, format!("GET {path} with {code}")).await;
        }
    }
    // A writer is confined to its prefix.
    node.client
        .create_region("other", "standalone", &[])
        .await
        .expect("region");
    let response = send(
        "PUT",
        "/v1/regions/other/kv/k",
        json(serde_json::json!({"value": "x"})),
        Some(&tokens.writer),
    )
    .await
    .expect("sent");
    expect(
        response,
        403,
        "forbidden",
        "writer outside its prefix".into(),
    )
    .await;
    let response = send(
        "PUT",
        "/v1/regions/app-data/kv/w",
        json(serde_json::json!({"value": "x"})),
        Some(&tokens.writer),
    )
    .await
    .expect("sent");
    assert!(
        response.status().is_success(),
        "the writer writes its regions"
    );
    node.client
        .delete("app-data", "w")
        .await
        .expect("admin deletes");
    node.client
        .delete_region("other", Duration::from_secs(5))
        .await
        .expect("admin deletes");

    // No TLS, or TLS with another CA: no answer at all.
    let plain = reqwest::Client::new()
        .get(format!("{}/v1/status", base.replace("https://", "http://")))
        .send()
        .await;
    assert!(
        plain.is_err() || !plain.expect("checked").status().is_success(),
        "plain HTTP is not served"
    );
    let stranger_ca = dir.path().join("stranger");
    init::init(&stranger_ca, &[1], &["127.0.0.1".to_string()]).expect("another CA");
    let stranger = https_client(&stranger_ca.join(init::CA_CERT))
        .get(format!("{base}/v1/status"))
        .bearer_auth(&tokens.admin)
        .send()
        .await;
    assert!(
        stranger.is_err(),
        "a node certificate from another CA is not trusted"
    );

    let after = observable_state(&node).await;
    let regions_after: Vec<Value> = after["regions"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r[0] != "other")
        .collect();
    assert_eq!(
        regions_after,
        before["regions"].as_array().cloned().unwrap_or_default()
    );
    assert_eq!(
        after["components"], before["components"],
        "nothing published"
    );
    assert_eq!(after["nodes"], before["nodes"], "no node re-pointed");
    assert_eq!(after["k"], before["k"], "the key is untouched");
    node.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn only_admin_publishes_and_the_record_names_the_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, _tokens) = secure_single_node(dir.path()).await;
    // Not a built-in: the node has no record of it yet.
    let bytes = synod_plugin_artifacts::WASI_PROBE_WASM.to_vec();
    node.client
        .publish_component(bytes)
        .await
        .expect("admin publishes");
    let components = node.client.components().await.expect("components");
    let published = components["components"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        published
            .iter()
            .any(|c| c["published_by_token"] == "admin" && c["published_at_ms"].as_u64().is_some()),
        "the audit record names the admin token: {components}"
    );
    node.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_wire_protocol_authenticates_once_and_authorizes_each_request() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, tokens) = secure_single_node(dir.path()).await;
    node.client
        .create_region("app-data", "standalone", &[])
        .await
        .expect("region");
    let address = node
        .client
        .base()
        .trim_start_matches("https://")
        .to_string();
    let ca = dir.path().join("secrets").join(init::CA_CERT);
    let with = |token: Option<&str>| Credentials {
        ca_pem: Some(std::fs::read(&ca).expect("ca")),
        token: token.map(str::to_string),
    };
    let code = |error: WireClientError| match error {
        WireClientError::Failed(failure) => failure.code,
        other => format!("{other}"),
    };
    for (token, expected) in [
        (None, "unauthenticated"),
        (Some("synod_nope"), "invalid_token"),
        (Some(tokens.expired.as_str()), "token_expired"),
    ] {
        let client = WireClient::connect_with(&address, TIMEOUT, &with(token))
            .await
            .expect("connects (TLS)");
        let error = client
            .call("app-data", &Op::put(b"k", b"evil"))
            .await
            .expect_err("refused");
        assert_eq!(code(error), expected);
    }
    let reader = WireClient::connect_with(&address, TIMEOUT, &with(Some(&tokens.reader)))
        .await
        .expect("connects");
    let error = reader
        .call("app-data", &Op::put(b"k", b"evil"))
        .await
        .expect_err("a reader may not write");
    assert_eq!(code(error), "forbidden");
    assert_eq!(
        reader
            .get("app-data", b"k", synod::wire::Consistency::Linearizable)
            .await
            .expect("a reader reads"),
        None,
        "nothing was written"
    );
    let writer = WireClient::connect_with(&address, TIMEOUT, &with(Some(&tokens.writer)))
        .await
        .expect("connects");
    writer
        .put("app-data", b"k", b"ok")
        .await
        .expect("the writer writes");
    // A plain-TCP wire client gets no answer from a TLS port.
    let plain = WireClient::connect(&address, Duration::from_secs(2)).await;
    if let Ok(plain) = plain {
        assert!(plain.put("app-data", b"k", b"evil").await.is_err());
    }
    assert_eq!(
        node.client
            .get("app-data", "k", "linearizable")
            .await
            .expect("get"),
        Some("ok".into())
    );
    node.stop().await.expect("stop");
}

/// A read token limited to `app-` regions sees and reads only those, on
/// HTTP (listings included) and on the wire; a writer limited to `app-`
/// cannot write elsewhere over the wire; a wire connection whose token
/// expires after it authenticated is refused from then on.
#[tokio::test(flavor = "multi_thread")]
async fn region_limited_tokens_and_tokens_that_expire_mid_connection() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secrets_dir = dir.path().join("secrets");
    let tokens = secrets(&secrets_dir, &[1]);
    let app_reader = init::add_token(
        &secrets_dir,
        "app-reader",
        Role::Read,
        Some(vec!["app-".into()]),
        None,
    )
    .expect("token");
    let soon = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 10;
    let short =
        init::add_token(&secrets_dir, "short", Role::Write, None, Some(soon)).expect("token");
    let mut config = NodeConfig::new(1, dir.path().join("data"));
    let credentials = secure(&mut config, &secrets_dir, &[1]).expect("security");
    let node = TestNode::start_secure(config, "127.0.0.1:0", &credentials)
        .await
        .expect("node");
    for region in ["app-data", "other"] {
        node.client
            .create_region(region, "standalone", &[])
            .await
            .expect("region");
        node.client.put(region, "k", "v").await.expect("put");
    }
    let http = https_client(&secrets_dir.join(init::CA_CERT));
    let base = node.client.base().to_string();
    let get = |path: &str| {
        http.get(format!("{base}{path}"))
            .bearer_auth(&app_reader)
            .send()
    };
    let get = &get;
    let get_json = |path: &'static str| async move {
        get(path)
            .await
            .expect("sent")
            .json::<Value>()
            .await
            .expect("json")
    };
    let listed = get_json("/v1/regions").await;
    let names: Vec<&str> = listed["regions"]
        .as_array()
        .expect("regions")
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert_eq!(names, ["app-data"], "{listed}");
    let cluster = get_json("/v1/cluster").await;
    let names: Vec<&String> = cluster["regions"]
        .as_object()
        .expect("regions")
        .keys()
        .collect();
    assert_eq!(names, ["app-data"], "{cluster}");
    let scraped = get("/metrics")
        .await
        .expect("sent")
        .text()
        .await
        .expect("text");
    assert!(
        scraped.contains("region=\"app-data\"") && !scraped.contains("region=\"other\""),
        "metrics show only the token's regions: {scraped}"
    );
    for path in [
        "/v1/regions/other",
        "/v1/regions/other/record",
        "/v1/regions/other/kv/k",
    ] {
        let response = get(path).await.expect("sent");
        assert_eq!(response.status().as_u16(), 403, "GET {path}");
    }
    let response = get("/v1/regions/app-data/kv/k").await.expect("sent");
    assert!(response.status().is_success(), "its own region reads");

    let address = base.trim_start_matches("https://").to_string();
    let with = |token: &str| Credentials {
        ca_pem: Some(std::fs::read(secrets_dir.join(init::CA_CERT)).expect("ca")),
        token: Some(token.to_string()),
    };
    let code = |error: WireClientError| match error {
        WireClientError::Failed(failure) => failure.code,
        other => format!("{other}"),
    };
    let reader = WireClient::connect_with(&address, TIMEOUT, &with(&app_reader))
        .await
        .expect("connects");
    let error = reader
        .get("other", b"k", synod::wire::Consistency::Linearizable)
        .await
        .expect_err("outside its prefix");
    assert_eq!(code(error), "forbidden");
    assert!(
        reader
            .get("app-data", b"k", synod::wire::Consistency::Linearizable)
            .await
            .is_ok()
    );
    let writer = WireClient::connect_with(&address, TIMEOUT, &with(&tokens.writer))
        .await
        .expect("connects");
    let error = writer
        .put("other", b"k", b"evil")
        .await
        .expect_err("outside its prefix");
    assert_eq!(code(error), "forbidden");

    let expiring = WireClient::connect_with(&address, TIMEOUT, &with(&short))
        .await
        .expect("connects");
    expiring
        .put("other", b"k", b"before-expiry")
        .await
        .expect("valid for now");
    let wait = soon.saturating_sub(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs(),
    ) + 1;
    tokio::time::sleep(Duration::from_secs(wait)).await;
    let error = expiring
        .put("other", b"k", b"after-expiry")
        .await
        .expect_err("expired on the open connection");
    assert_eq!(code(error), "token_expired");
    assert_eq!(
        node.client
            .get("other", "k", "linearizable")
            .await
            .expect("get"),
        Some("before-expiry".into()),
        "refusals changed nothing"
    );
    node.stop().await.expect("stop");
}

fn framed(payload: &[u8]) -> Vec<u8> {
    let mut bytes = (payload.len() as u32).to_be_bytes().to_vec();
    bytes.extend_from_slice(payload);
    bytes
}

/// A TLS connection to node `acceptor`'s peer port presenting the
/// certificate of `cert_id` from `secrets`; `None` if TLS refused it.
async fn dial_as(
    port: u16,
    secrets: &Path,
    cert_id: u64,
    acceptor: u64,
) -> Option<tokio_rustls::client::TlsStream<TcpStream>> {
    let (cert, key) = init::node_files(secrets, cert_id);
    let tls = synod::security::NodeTls::load(&secrets.join(init::CA_CERT), &cert, &key)
        .expect("tls material");
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let name = rustls_pki_types::ServerName::try_from(synod::security::tls::node_name(acceptor))
        .expect("name");
    tls.peer_connector().connect(name, tcp).await.ok()
}

/// Dials node `acceptor` on `port` with the certificate of `cert_id` from
/// `secrets`, claims to be `claim`; whether the node welcomed it.
async fn welcomed(port: u16, secrets: &Path, cert_id: u64, claim: u64, acceptor: u64) -> bool {
    let Some(mut stream) = dial_as(port, secrets, cert_id, acceptor).await else {
        return false;
    };
    let hello = Frame::Hello {
        version: TRANSPORT_VERSION,
        node_id: claim,
    };
    if stream.write_all(&framed(&hello.encode())).await.is_err() {
        return false;
    }
    let mut length = [0u8; 4];
    let read = tokio::time::timeout(TIMEOUT, stream.read_exact(&mut length)).await;
    if !matches!(read, Ok(Ok(_))) {
        return false;
    }
    let mut body = vec![0u8; u32::from_be_bytes(length) as usize];
    if stream.read_exact(&mut body).await.is_err() {
        return false;
    }
    matches!(Frame::decode(&body), Ok(Frame::Welcome { node_id }) if node_id == acceptor)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_peer_cannot_join_as_another_node_or_with_another_cas_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secrets_dir = dir.path().join("secrets");
    secrets(&secrets_dir, &[2, 3, 5, 9]);
    let port = free_port().expect("port");
    let mut config = NodeConfig::new(5, dir.path().join("data"));
    config.peer_listen = Some(format!("127.0.0.1:{port}").parse().expect("address"));
    config.peer_address = format!("127.0.0.1:{port}");
    let record = |peer: String| NodeRecord {
        api: "127.0.0.1:1".into(),
        peer,
    };
    config.bootstrap = vec![
        (5, record(config.peer_address.clone())),
        (2, record("127.0.0.1:1".into())),
        (3, record("127.0.0.1:1".into())),
    ];
    config.control.voters = vec![5];
    let credentials = secure(&mut config, &secrets_dir, &[]).expect("security");
    let node = TestNode::start_secure(config, "127.0.0.1:0", &credentials)
        .await
        .expect("node");

    assert!(
        welcomed(port, &secrets_dir, 2, 2, 5).await,
        "node 2 with its own certificate joins (the control case)"
    );
    assert!(
        !welcomed(port, &secrets_dir, 3, 2, 5).await,
        "node 3's certificate cannot claim node 2"
    );
    assert!(
        !welcomed(port, &secrets_dir, 5, 5, 5).await,
        "nobody joins as the acceptor itself"
    );
    assert!(
        !welcomed(port, &secrets_dir, 9, 9, 5).await,
        "a certificate of the CA for an unknown node id is refused"
    );
    assert!(
        closed_before_any_frame(port, &secrets_dir, 9, 5).await,
        "a certificate naming no known peer is refused before any frame is read"
    );
    assert!(
        !closed_before_any_frame(port, &secrets_dir, 2, 5).await,
        "a known peer's certificate is given the time to send its hello (the control case)"
    );
    let stranger = dir.path().join("stranger");
    init::init(&stranger, &[2], &[]).expect("another CA");
    assert!(
        !welcomed(port, &stranger, 2, 2, 5).await,
        "a certificate from another CA is refused"
    );
    let status = node.client.status().await.expect("status");
    assert!(
        status["transport"]["rejected_connections"]
            .as_u64()
            .unwrap_or(0)
            >= 4,
        "every refusal is counted: {status}"
    );
    node.stop().await.expect("stop");
}

/// Dials node `acceptor` with the certificate of `cert_id` and sends
/// nothing: whether the node closes the connection within two seconds
/// (well inside its 5 s handshake timeout), i.e. without waiting for a
/// `Hello` frame.
async fn closed_before_any_frame(port: u16, secrets: &Path, cert_id: u64, acceptor: u64) -> bool {
    let Some(mut stream) = dial_as(port, secrets, cert_id, acceptor).await else {
        return true;
    };
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(Duration::from_secs(2), stream.read(&mut byte)).await,
        Ok(Ok(0) | Err(_))
    )
}

/// A TCP proxy from `listen` to `target` recording every byte both ways.
async fn recording_proxy(listen: u16, target: u16) -> Arc<Mutex<Vec<u8>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let listener = TcpListener::bind(("127.0.0.1", listen))
        .await
        .expect("bind");
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let Ok(outbound) = TcpStream::connect(("127.0.0.1", target)).await else {
                continue;
            };
            let (in_read, in_write) = inbound.into_split();
            let (out_read, out_write) = outbound.into_split();
            for (mut from, mut to) in [
                (
                    Box::new(in_read) as Box<dyn tokio::io::AsyncRead + Send + Unpin>,
                    Box::new(out_write) as Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
                ),
                (Box::new(out_read), Box::new(in_write)),
            ] {
                let record = record.clone();
                tokio::spawn(async move {
                    let mut buffer = vec![0u8; 64 * 1024];
                    while let Ok(read) = from.read(&mut buffer).await {
                        if read == 0 {
                            break;
                        }
                        record
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .extend_from_slice(&buffer[..read]);
                        if to.write_all(&buffer[..read]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        }
    });
    seen
}

/// Two nodes whose link runs through a recording proxy; writes a canary
/// value through the region and returns whether the proxy saw it.
async fn proxy_sees_the_canary(secure_nodes: bool) -> bool {
    let dir = tempfile::tempdir().expect("tempdir");
    let secrets_dir = dir.path().join("secrets");
    let [api1, api2, peer1, peer2, proxy] = [(); 5].map(|()| free_port().expect("port"));
    let seen = recording_proxy(proxy, peer2).await;
    let record = |api: u16, peer: u16| NodeRecord {
        api: format!("127.0.0.1:{api}"),
        peer: format!("127.0.0.1:{peer}"),
    };
    let mut nodes = Vec::new();
    for (id, api, peer) in [(1, api1, peer1), (2, api2, peer2)] {
        let mut config = NodeConfig::new(id, dir.path().join(format!("data{id}")));
        config.peer_listen = Some(format!("127.0.0.1:{peer}").parse().expect("address"));
        config.peer_address = format!("127.0.0.1:{peer}");
        config.api_address = format!("127.0.0.1:{api}");
        // Node 1 dials node 2 (the lower id dials) through the proxy.
        config.bootstrap = vec![(1, record(api1, peer1)), (2, record(api2, proxy))];
        let credentials = if secure_nodes {
            secure(&mut config, &secrets_dir, &[1, 2]).expect("security")
        } else {
            Credentials::none()
        };
        nodes.push(
            TestNode::start_secure(config, &format!("127.0.0.1:{api}"), &credentials)
                .await
                .expect("node"),
        );
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match nodes[0].client.create_region("canary", "raft", &[]).await {
            Ok(_) => break,
            Err(error) if tokio::time::Instant::now() < deadline => {
                let _ = error;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => panic!("no region: {error}"),
        }
    }
    let canary = "mitm-canary-7f3a9c1e5b";
    loop {
        match nodes[0].client.put("canary", "k", canary).await {
            Ok(()) => break,
            Err(error) if tokio::time::Instant::now() < deadline => {
                let _ = error;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => panic!("no write: {error}"),
        }
    }
    // Both replicas hold it: it crossed the link.
    loop {
        let here = nodes[1].client.region_status("canary").await;
        let both = nodes[0]
            .client
            .get("canary", "k", "linearizable")
            .await
            .ok()
            .flatten()
            == Some(canary.to_string())
            && here.is_ok_and(|s| s["state_machine"]["keys"].as_u64() == Some(1));
        if both {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the value never reached node 2"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let bytes = seen
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    assert!(!bytes.is_empty(), "the link ran through the proxy");
    for node in nodes {
        node.stop().await.expect("stop");
    }
    bytes
        .windows(canary.len())
        .any(|window| window == canary.as_bytes())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_man_in_the_middle_between_two_nodes_sees_no_plaintext() {
    assert!(
        !proxy_sees_the_canary(true).await,
        "with TLS the proxy must not see the value"
    );
    // The control: in the clear, the same proxy does see it.
    assert!(
        proxy_sees_the_canary(false).await,
        "without TLS the proxy sees the value (the check works)"
    );
}
