//! The HTTP API against a real node running the standalone Wasm plugin:
//! the happy path, and every kind of bad request getting a clear JSON
//! error with the right status while changing nothing.

use serde_json::{Value, json};
use synod::node::NodeConfig;
use synod_tests::TestNode;

async fn node() -> (TestNode, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = NodeConfig::new(1, dir.path().to_path_buf());
    config.value_bytes_max = 1024;
    config.key_bytes_max = 64;
    let node = TestNode::start(config).await.expect("node starts");
    (node, dir)
}

/// Raw request returning (status, body) so tests see exactly what a curl user sees.
async fn raw(method: &str, url: &str, body: Option<&str>) -> (u16, Value) {
    let client = reqwest::Client::new();
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut request = client.request(method, url);
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let bytes = response.bytes().await.expect("body");
    let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, value)
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<none>")
}

#[tokio::test(flavor = "multi_thread")]
async fn region_create_write_read_delete_cas() {
    let (node, _dir) = node().await;
    let client = &node.client;
    let created = client
        .create_region("users", "standalone", &[])
        .await
        .expect("create");
    assert_eq!(created["protocol"]["name"], "standalone");
    assert_eq!(created["health"]["state"], "running");

    client.put("users", "alice", "1").await.expect("put");
    assert_eq!(
        client
            .get("users", "alice", "linearizable")
            .await
            .expect("get"),
        Some("1".into())
    );
    assert_eq!(
        client.get("users", "alice", "local").await.expect("get"),
        Some("1".into())
    );
    assert_eq!(
        client.get("users", "nobody", "lease").await.expect("get"),
        None
    );

    let swap = client
        .cas("users", "alice", Some("0"), Some("2"))
        .await
        .expect("cas");
    assert!(!swap.succeeded);
    assert_eq!(swap.current.as_deref(), Some("1"));
    let swap = client
        .cas("users", "alice", Some("1"), Some("2"))
        .await
        .expect("cas");
    assert!(swap.succeeded);
    let create = client
        .cas("users", "bob", None, Some("b"))
        .await
        .expect("cas");
    assert!(
        create.succeeded,
        "cas with expected=null creates an absent key"
    );

    // Keys may hold '/', spaces and unicode: they are percent-encoded.
    client
        .put("users", "dir/sub key/é", "x")
        .await
        .expect("put odd key");
    assert_eq!(
        client
            .get("users", "dir/sub key/é", "linearizable")
            .await
            .expect("get"),
        Some("x".into())
    );

    assert!(client.delete("users", "alice").await.expect("delete"));
    assert!(!client.delete("users", "alice").await.expect("delete again"));
    assert_eq!(
        client
            .get("users", "alice", "linearizable")
            .await
            .expect("get"),
        None
    );

    let listing = client.regions().await.expect("list");
    assert_eq!(listing["regions"].as_array().map(Vec::len), Some(1));
    let status = client.region_status("users").await.expect("status");
    assert_eq!(status["state_machine"]["keys"], 2);
    assert!(status["plugin"]["applied_position"].as_u64().unwrap_or(0) >= 6);
    let node_status = client.status().await.expect("node status");
    assert!(node_status["wal"]["fsyncs"].as_u64().unwrap_or(0) > 0);
    node.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_get_clear_errors_and_change_nothing() {
    let (node, _dir) = node().await;
    let base = node.client.base().to_string();
    node.client
        .create_region("r", "standalone", &[])
        .await
        .expect("create");
    node.client.put("r", "k", "original").await.expect("put");
    let digest = |status: &Value| {
        status["state_machine"]["digest"]
            .as_str()
            .map(str::to_string)
    };
    let before = digest(&node.client.region_status("r").await.expect("status"));

    let kv = format!("{base}/v1/regions/r/kv/k");
    let long_value = "x".repeat(2000);
    let long_key = "k".repeat(100);
    let cases: Vec<(&str, String, Option<String>, u16, &str)> = vec![
        (
            "PUT",
            kv.clone(),
            Some("{not json".into()),
            400,
            "malformed_json",
        ),
        (
            "PUT",
            kv.clone(),
            Some(r#"{"value": 5}"#.into()),
            400,
            "malformed_json",
        ),
        (
            "PUT",
            kv.clone(),
            Some(r#"{"valu": "x"}"#.into()),
            400,
            "malformed_json",
        ),
        ("PUT", kv.clone(), None, 400, "malformed_json"),
        (
            "PUT",
            kv.clone(),
            Some(json!({ "value": long_value }).to_string()),
            413,
            "value_too_large",
        ),
        (
            "PUT",
            format!("{base}/v1/regions/r/kv/{long_key}"),
            Some(r#"{"value":"v"}"#.into()),
            413,
            "key_too_large",
        ),
        (
            "PUT",
            format!("{base}/v1/regions/nope/kv/k"),
            Some(r#"{"value":"v"}"#.into()),
            404,
            "region_not_found",
        ),
        (
            "GET",
            format!("{kv}?consistency=eventual"),
            None,
            400,
            "invalid_consistency",
        ),
        (
            "GET",
            format!("{kv}?colour=red"),
            None,
            400,
            "invalid_query",
        ),
        (
            "POST",
            format!("{base}/v1/regions/r/cas"),
            Some(r#"{"key":"k","expected":1}"#.into()),
            400,
            "malformed_json",
        ),
        (
            "POST",
            format!("{base}/v1/regions"),
            Some(r#"{"name":"../etc","protocol":"standalone"}"#.into()),
            400,
            "invalid_region_name",
        ),
        (
            "POST",
            format!("{base}/v1/regions"),
            Some(r#"{"name":"r","protocol":"standalone"}"#.into()),
            409,
            "region_exists",
        ),
        (
            "POST",
            format!("{base}/v1/regions"),
            Some(r#"{"name":"s","protocol":"paxos-9000"}"#.into()),
            400,
            "unknown_protocol",
        ),
        (
            "POST",
            format!("{base}/v1/regions"),
            Some(r#"{"name":"s"}"#.into()),
            400,
            "malformed_json",
        ),
        (
            "GET",
            format!("{base}/v1/nothing-here"),
            None,
            404,
            "not_found",
        ),
        (
            "DELETE",
            format!("{base}/v1/status"),
            None,
            405,
            "method_not_allowed",
        ),
        (
            "GET",
            format!("{base}/v1/regions/r/kv/%FF%FE"),
            None,
            400,
            "bad_request",
        ),
    ];
    for (method, url, body, status, expected_code) in cases {
        let (got_status, got) = raw(method, &url, body.as_deref()).await;
        assert_eq!(got_status, status, "{method} {url}: {got}");
        assert_eq!(code(&got), expected_code, "{method} {url}: {got}");
        let message = got["error"]["message"].as_str().unwrap_or("");
        assert!(!message.is_empty(), "{method} {url} has an error message");
    }

    // Garbage bytes where a component belongs.
    let response = reqwest::Client::new()
        .post(format!("{base}/v1/components"))
        .body(vec![0xde, 0xad, 0xbe, 0xef])
        .send()
        .await
        .expect("publish");
    assert_eq!(response.status().as_u16(), 400);

    assert_eq!(
        node.client
            .get("r", "k", "linearizable")
            .await
            .expect("get"),
        Some("original".into())
    );
    let after = digest(&node.client.region_status("r").await.expect("status"));
    assert_eq!(before, after, "no bad request changed the state");
    assert_eq!(
        node.client.regions().await.expect("list")["regions"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    node.stop().await.expect("stop");
}

async fn node_with(adjust: impl FnOnce(&mut NodeConfig)) -> (TestNode, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = NodeConfig::new(1, dir.path().to_path_buf());
    adjust(&mut config);
    let node = TestNode::start(config).await.expect("node starts");
    (node, dir)
}

fn address_of(node: &TestNode) -> String {
    node.client.base().trim_start_matches("http://").to_string()
}

/// Whether the node closes `stream` within `within`.
async fn closes_within(stream: &mut tokio::net::TcpStream, within: std::time::Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buffer = [0u8; 1024];
    tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn region_specs_over_the_size_limits_are_refused() {
    let (node, _dir) = node().await;
    let base = node.client.base().to_string();
    let url = format!("{base}/v1/regions");
    // Params over 64 KiB in all.
    let big = "x".repeat(40 * 1024);
    let body = json!({"name": "p", "protocol": "standalone", "params": {"a": big, "b": big}});
    let (status, body) = raw("POST", &url, Some(&body.to_string())).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(code(&body), "params_too_large", "{body}");
    // Too many params.
    let many: serde_json::Map<String, Value> = (0..100)
        .map(|i| (format!("p{i}"), Value::String("v".into())))
        .collect();
    let body = json!({"name": "p", "protocol": "standalone", "params": many});
    let (status, body) = raw("POST", &url, Some(&body.to_string())).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(code(&body), "too_many_params", "{body}");
    // A body far over any valid request is refused once the limit is
    // read, not after 40 MB.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(address_of(&node))
            .await
            .expect("connect");
        stream
            .write_all(
                b"POST /v1/regions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 40000000\r\n\r\n{\"name\":",
            )
            .await
            .expect("write");
        let filler = vec![b' '; 64 * 1024];
        for _ in 0..20 {
            if stream.write_all(&filler).await.is_err() {
                break;
            }
        }
        let mut answer = vec![0u8; 4096];
        let read =
            tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut answer))
                .await
                .expect("answered without the rest of the body")
                .expect("read");
        let answer = String::from_utf8_lossy(&answer[..read]).to_string();
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        assert!(answer.contains("body_too_large"), "{answer}");
    }
    // Nothing was created; a spec within the limits still is.
    let (status, body) = raw("GET", &format!("{base}/v1/regions/p"), None).await;
    assert_eq!(status, 404, "{body}");
    let fine = json!({"name": "p", "protocol": "standalone", "params": {"a": "x".repeat(1000)}});
    let (status, body) = raw("POST", &url, Some(&fine.to_string())).await;
    assert_eq!(status, 201, "{body}");
    node.stop().await.expect("stop");
}

/// Sends `method path` with a body of `length` bytes (a JSON prefix, then
/// spaces), stopping early if the node stops reading; returns the answer
/// read within 5 s.
async fn announce_body(node: &TestNode, method: &str, path: &str, length: usize) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address_of(node))
        .await
        .expect("connect");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n{{"
    );
    stream.write_all(head.as_bytes()).await.expect("write");
    let filler = vec![b' '; 64 * 1024];
    let mut left = length - 1;
    while left > 0 {
        let chunk = left.min(filler.len());
        if stream.write_all(&filler[..chunk]).await.is_err() {
            break;
        }
        left -= chunk;
    }
    let mut answer = vec![0u8; 4096];
    let read = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut answer))
        .await
        .unwrap_or_else(|_| panic!("{method} {path}: no answer without the rest of the body"))
        .expect("read");
    String::from_utf8_lossy(&answer[..read]).to_string()
}

/// Goal: every route has its own body limit (key-value writes 8 MiB,
/// region specs and swaps 1 MiB, small admin bodies 64 KiB), and a body
/// over it is refused with 413 `body_too_large`, changing nothing. (A
/// route that takes no body, like restart, does not read one.)
#[tokio::test(flavor = "multi_thread")]
async fn bodies_over_each_routes_limit_are_refused() {
    let (node, _dir) = node().await;
    node.client
        .create_region("r", "standalone", &[])
        .await
        .expect("region");
    let cases = [
        ("PUT", "/v1/regions/r/kv/k", synod::api::KV_BODY_BYTES_MAX),
        ("POST", "/v1/regions/r/cas", synod::api::KV_BODY_BYTES_MAX),
        (
            "POST",
            "/v1/regions/r/swap",
            synod::api::REGION_BODY_BYTES_MAX,
        ),
        (
            "POST",
            "/v1/regions/r/membership",
            synod::api::SMALL_BODY_BYTES_MAX,
        ),
        (
            "POST",
            "/v1/cluster/nodes",
            synod::api::SMALL_BODY_BYTES_MAX,
        ),
        ("POST", "/v1/regions", synod::api::REGION_BODY_BYTES_MAX),
    ];
    for (method, path, limit) in cases {
        let answer = announce_body(&node, method, path, limit + 1).await;
        assert!(
            answer.starts_with("HTTP/1.1 413"),
            "{method} {path}: {answer}"
        );
        assert!(
            answer.contains("body_too_large"),
            "{method} {path}: {answer}"
        );
    }
    assert_eq!(
        node.client
            .get("r", "k", "linearizable")
            .await
            .expect("get"),
        None
    );
    let status = node.client.region_status("r").await.expect("status");
    assert_eq!(status["epoch"], 1, "no swap began: {status}");
    node.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_over_the_cap_are_closed_at_once() {
    let (node, _dir) = node_with(|config| config.connections.connections_max = 3).await;
    let address = address_of(&node);
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(
            tokio::net::TcpStream::connect(&address)
                .await
                .expect("connect"),
        );
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let mut extra = tokio::net::TcpStream::connect(&address)
        .await
        .expect("connect");
    assert!(
        closes_within(&mut extra, std::time::Duration::from_secs(1)).await,
        "the connection over the cap is closed"
    );
    drop(idle);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let status = node.client.status().await.expect("room again");
    assert!(
        status["api"]["connections_refused"].as_u64().unwrap_or(0) >= 1,
        "{status}"
    );
    node.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slowloris_client_is_closed_after_the_header_timeout() {
    use tokio::io::AsyncWriteExt;
    let timeout = std::time::Duration::from_millis(1500);
    let (node, _dir) = node_with(|config| config.connections.http_header_timeout = timeout).await;
    let mut stream = tokio::net::TcpStream::connect(address_of(&node))
        .await
        .expect("connect");
    let started = std::time::Instant::now();
    let request = b"GET /v1/status HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let mut closed = false;
    for byte in request {
        if stream.write_all(&[*byte]).await.is_err() {
            closed = true;
            break;
        }
        if closes_within(&mut stream, std::time::Duration::from_millis(250)).await {
            closed = true;
            break;
        }
    }
    let elapsed = started.elapsed();
    assert!(closed, "the slow client was never closed");
    assert!(
        elapsed >= timeout / 2 && elapsed < timeout * 3,
        "closed after {elapsed:?}, the header timeout is {timeout:?}"
    );
    // A normal client is served (a fresh one: the test's pooled
    // connection went idle as long as the slow one and is closed too).
    synod::client::ApiClient::new(node.client.base())
        .status()
        .await
        .expect("status");
    node.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_does_not_read_its_responses_is_closed() {
    use tokio::io::AsyncWriteExt;
    let (node, _dir) = node_with(|config| {
        config.connections.http_header_timeout = std::time::Duration::from_millis(800);
    })
    .await;
    {
        // Its pooled connection closes when it is dropped.
        let setup = synod::client::ApiClient::new(node.client.base());
        setup
            .create_region("kv", "standalone", &[])
            .await
            .expect("region");
        setup
            .put("kv", "big", &"v".repeat(1 << 20))
            .await
            .expect("put");
    }
    // 64 pipelined reads of a 1 MiB value; no response is ever read.
    let mut stream = tokio::net::TcpStream::connect(address_of(&node))
        .await
        .expect("connect");
    let request = b"GET /v1/regions/kv/kv/big?consistency=local HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut burst = Vec::new();
    for _ in 0..64 {
        burst.extend_from_slice(request);
    }
    stream.write_all(&burst).await.expect("requests");
    let started = std::time::Instant::now();
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        // A fresh client each time: only its own connection should be open
        // once the stuck one is closed.
        let status = synod::client::ApiClient::new(node.client.base())
            .status()
            .await
            .expect("status");
        if status["api"]["connections_open"].as_u64().unwrap_or(99) <= 1 {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(3),
            "the connection that does not read is still open: {status}"
        );
    }
    eprintln!("closed after about {:?}", started.elapsed());
    drop(stream);
    node.stop().await.expect("stop");
}

/// The value of the sample `name{labels}` (labels in the order rendered)
/// in a Prometheus text exposition, 0 when absent.
fn sample(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            (series == name_and_labels).then(|| value.parse().expect("a number"))
        })
        .unwrap_or(0.0)
}

/// `GET /metrics` and `GET /v1/metrics`: after some puts and gets the
/// region's counters moved by exactly that much, and so did its latency
/// histogram's count; the WAL counted fsyncs.
#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_a_regions_puts_and_gets() {
    let (node, _dir) = node().await;
    let client = &node.client;
    client
        .create_region("counted", "standalone", &[])
        .await
        .expect("create");
    let http = reqwest::Client::new();
    let scrape = |path: &'static str| {
        let http = http.clone();
        let url = format!("{}{path}", client.base());
        async move {
            let response = http.get(url).send().await.expect("scrape");
            assert_eq!(response.status().as_u16(), 200);
            let content_type = response
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            assert!(
                content_type.starts_with("application/openmetrics-text"),
                "{content_type}"
            );
            response.text().await.expect("text")
        }
    };
    let before = scrape("/metrics").await;
    for i in 0..5 {
        client
            .put("counted", &format!("k{i}"), "v")
            .await
            .expect("put");
    }
    for key in ["k0", "k1", "missing"] {
        client
            .get("counted", key, "linearizable")
            .await
            .expect("get");
    }
    let after = scrape("/v1/metrics").await;
    let delta = |series: &str| sample(&after, series) - sample(&before, series);
    assert_eq!(
        delta(r#"synod_region_writes_total{region="counted",result="ok"}"#),
        5.0,
        "{after}"
    );
    assert_eq!(
        delta(r#"synod_region_writes_total{region="counted",result="error"}"#),
        0.0
    );
    assert_eq!(
        delta(r#"synod_region_reads_total{region="counted",result="ok"}"#),
        3.0
    );
    assert_eq!(
        delta(r#"synod_region_write_latency_seconds_count{region="counted"}"#),
        5.0
    );
    assert_eq!(
        delta(r#"synod_region_write_latency_seconds_bucket{le="+Inf",region="counted"}"#),
        5.0
    );
    assert_eq!(
        delta(r#"synod_region_read_latency_seconds_count{region="counted"}"#),
        3.0
    );
    assert!(delta(r#"synod_region_write_latency_seconds_sum{region="counted"}"#) > 0.0);
    assert!(delta("synod_wal_fsyncs_total") >= 1.0);
    assert!(delta("synod_wal_written_bytes_total") > 0.0);
    assert!(delta(r#"synod_plugin_calls_total{region="counted"}"#) >= 1.0);
    assert!(delta(r#"synod_plugin_fuel_total{region="counted"}"#) > 0.0);
    assert_eq!(sample(&after, r#"synod_region_up{region="counted"}"#), 1.0);
    assert_eq!(
        sample(&after, r#"synod_region_quota_kv_keys{region="counted"}"#),
        0.0
    );
    assert!(sample(&after, r#"synod_region_quota_log_bytes{region="counted"}"#) > 0.0);
    node.stop().await.expect("stop");
}
