//! The binary client protocol against a real node running the standalone
//! Wasm plugin: it shares the HTTP port, pipelines thousands of requests
//! on one connection, refuses bad requests with the HTTP API's codes while
//! changing nothing, and ends a connection that sends garbage without
//! disturbing anyone else.

use std::time::Duration;

use synod::node::NodeConfig;
use synod::wire::{
    CONNECTION_ERROR_ID, Consistency, FRAME_BYTES_MAX, MAGIC, Op, Request, Response, WireClient,
    WireClientError, opening,
};
use synod_tests::{NodeProcess, TestNode, free_port, node_binary};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TIMEOUT: Duration = Duration::from_secs(20);

async fn node_with_region() -> (TestNode, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = NodeConfig::new(1, dir.path().to_path_buf());
    config.value_bytes_max = 1024;
    config.key_bytes_max = 64;
    let node = TestNode::start(config).await.expect("node starts");
    node.client
        .create_region("kv", "standalone", &[])
        .await
        .expect("create region");
    let address = node.client.base().trim_start_matches("http://").to_string();
    (node, address, dir)
}

async fn digest(node: &TestNode) -> String {
    let status = node.client.region_status("kv").await.expect("status");
    status["state_machine"]["digest"]
        .as_str()
        .expect("digest")
        .to_string()
}

fn failure_code(error: &WireClientError) -> &str {
    match error {
        WireClientError::Failed(failure) => &failure.code,
        other => panic!("expected a refusal, got {other}"),
    }
}

/// Reads one response frame from a raw connection.
async fn read_response(stream: &mut tokio::net::TcpStream) -> Option<Response> {
    let mut length = [0u8; 4];
    stream.read_exact(&mut length).await.ok()?;
    let mut body = vec![0u8; u32::from_be_bytes(length) as usize];
    stream.read_exact(&mut body).await.ok()?;
    postcard::from_bytes(&body).ok()
}

fn frame(request: &Request) -> Vec<u8> {
    let body = postcard::to_allocvec(request).expect("encode");
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    frame
}

#[tokio::test(flavor = "multi_thread")]
async fn every_operation_and_http_on_the_same_port() {
    let (node, address, _dir) = node_with_region().await;
    let wire = WireClient::connect(&address, TIMEOUT)
        .await
        .expect("connect");

    wire.put("kv", b"alice", b"1").await.expect("put");
    assert_eq!(
        wire.get("kv", b"alice", Consistency::Linearizable)
            .await
            .expect("get"),
        Some(b"1".to_vec())
    );
    // What the wire wrote, HTTP reads, and the other way round.
    assert_eq!(
        node.client.get("kv", "alice", "local").await.expect("get"),
        Some("1".into())
    );
    node.client.put("kv", "bob", "2").await.expect("put");
    assert_eq!(
        wire.get("kv", b"bob", Consistency::Local)
            .await
            .expect("get"),
        Some(b"2".to_vec())
    );

    assert_eq!(
        wire.cas("kv", b"alice", Some(b"0"), Some(b"9"))
            .await
            .expect("cas"),
        (false, Some(b"1".to_vec()))
    );
    assert!(
        wire.cas("kv", b"alice", Some(b"1"), Some(b"9"))
            .await
            .expect("cas")
            .0
    );
    assert!(wire.delete("kv", b"alice").await.expect("delete"));
    assert!(!wire.delete("kv", b"alice").await.expect("delete"));
    assert_eq!(
        wire.get("kv", b"alice", Consistency::Lease)
            .await
            .expect("get"),
        None
    );
    node.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn thousands_in_flight_on_one_connection() {
    let (node, address, _dir) = node_with_region().await;
    let wire = WireClient::connect(&address, TIMEOUT)
        .await
        .expect("connect");
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..5000u32 {
        let wire = wire.clone();
        calls.spawn(async move {
            let key = format!("k{i}");
            wire.put("kv", key.as_bytes(), &i.to_be_bytes()).await
        });
    }
    while let Some(result) = calls.join_next().await {
        result.expect("task").expect("put");
    }
    for i in (0..5000u32).step_by(499) {
        let key = format!("k{i}");
        assert_eq!(
            wire.get("kv", key.as_bytes(), Consistency::Linearizable)
                .await
                .expect("get"),
            Some(i.to_be_bytes().to_vec())
        );
    }
    node.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_are_refused_and_change_nothing() {
    let (node, address, _dir) = node_with_region().await;
    let wire = WireClient::connect(&address, TIMEOUT)
        .await
        .expect("connect");
    wire.put("kv", b"k", b"v").await.expect("put");
    let before = digest(&node).await;

    let cases: Vec<(&str, Op, &str)> = vec![
        ("kv", Op::put(b"", b"v"), "invalid_key"),
        ("kv", Op::put(&[b'k'; 65], b"v"), "key_too_large"),
        ("kv", Op::put(b"k", &[b'v'; 1025]), "value_too_large"),
        (
            "kv",
            Op::cas(b"k", Some(&[b'v'; 1025]), None),
            "value_too_large",
        ),
        ("kv", Op::get(b"", Consistency::Local), "invalid_key"),
        ("nope", Op::put(b"k", b"v"), "region_not_found"),
        ("../etc", Op::put(b"k", b"v"), "region_not_found"),
    ];
    for (region, op, code) in cases {
        let error = wire.call(region, &op).await.expect_err("refused");
        assert_eq!(failure_code(&error), code, "{region} {op:?}: {error}");
        assert!(error.never_applied(), "{code} proves nothing happened");
    }
    assert_eq!(digest(&node).await, before, "refusals changed nothing");
    // The connection is still good after refusals.
    assert_eq!(
        wire.get("kv", b"k", Consistency::Local).await.expect("get"),
        Some(b"v".to_vec())
    );
    node.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_ends_only_its_own_connection() {
    let (node, address, _dir) = node_with_region().await;
    let bystander = WireClient::connect(&address, TIMEOUT)
        .await
        .expect("connect");
    bystander.put("kv", b"k", b"v").await.expect("put");
    let before = digest(&node).await;

    // A frame that is not a request: an error on id 0, then the close.
    let mut stream = tokio::net::TcpStream::connect(&address)
        .await
        .expect("connect");
    stream.write_all(&opening(None)).await.expect("magic");
    stream
        .write_all(&[0, 0, 0, 5, 0xff, 0xff, 0xff, 0xff, 0xff])
        .await
        .expect("garbage");
    let response = read_response(&mut stream).await.expect("an error frame");
    assert_eq!(response.id, CONNECTION_ERROR_ID);
    assert_eq!(
        response.result.expect_err("an error").code,
        "malformed_request"
    );
    assert!(read_response(&mut stream).await.is_none(), "then closed");

    // A frame over the limit: refused before its body is read.
    let mut stream = tokio::net::TcpStream::connect(&address)
        .await
        .expect("connect");
    stream.write_all(&opening(None)).await.expect("magic");
    let huge = u32::try_from(FRAME_BYTES_MAX + 1).expect("fits");
    stream.write_all(&huge.to_be_bytes()).await.expect("length");
    let response = read_response(&mut stream).await.expect("an error frame");
    assert_eq!(
        response.result.expect_err("an error").code,
        "malformed_frame"
    );

    // A truncated frame, then the client vanishes mid-request.
    let mut stream = tokio::net::TcpStream::connect(&address)
        .await
        .expect("connect");
    stream.write_all(&opening(None)).await.expect("magic");
    let request = frame(&Request {
        id: 1,
        region: "kv".into(),
        op: Op::put(b"half", b"written"),
    });
    stream
        .write_all(&request[..request.len() / 2])
        .await
        .expect("half");
    drop(stream);

    // The magic in pieces is still the wire protocol.
    let mut stream = tokio::net::TcpStream::connect(&address)
        .await
        .expect("connect");
    stream.write_all(&MAGIC[..3]).await.expect("part");
    tokio::time::sleep(Duration::from_millis(30)).await;
    stream.write_all(&opening(None)[3..]).await.expect("rest");
    stream
        .write_all(&frame(&Request {
            id: 42,
            region: "kv".into(),
            op: Op::get(b"k", Consistency::Local),
        }))
        .await
        .expect("request");
    let response = read_response(&mut stream).await.expect("an answer");
    assert_eq!(response.id, 42);

    // Plain garbage without the magic is HTTP's problem: a 400-class close.
    let mut stream = tokio::net::TcpStream::connect(&address)
        .await
        .expect("connect");
    stream
        .write_all(b"\x00\x01\x02 not http\r\n\r\n")
        .await
        .expect("garbage");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(TIMEOUT, stream.read_to_end(&mut answer)).await;
    assert!(
        answer.is_empty() || answer.starts_with(b"HTTP/1.1 4"),
        "{}",
        String::from_utf8_lossy(&answer)
    );

    assert_eq!(
        bystander
            .get("kv", b"half", Consistency::Local)
            .await
            .expect("get"),
        None,
        "the truncated request never ran"
    );
    assert_eq!(digest(&node).await, before);
    node.client.status().await.expect("HTTP still answers");
    node.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_that_goes_away_fails_calls_as_unknown() {
    let (node, address, _dir) = node_with_region().await;
    let wire = WireClient::connect(&address, TIMEOUT)
        .await
        .expect("connect");
    wire.put("kv", b"k", b"v").await.expect("put");
    node.stop().await.expect("stop");
    let error = wire
        .put("kv", b"k", b"w")
        .await
        .expect_err("no node to answer");
    assert!(
        error.is_unreachable() || matches!(error, WireClientError::Timeout(_)),
        "{error}"
    );
    let refused = WireClient::connect(&address, TIMEOUT)
        .await
        .err()
        .expect("nothing listens");
    assert!(refused.never_applied());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_client_dials_again_after_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port().expect("port");
    let mut process = NodeProcess::start(node_binary!(), dir.path(), port)
        .await
        .expect("node starts");
    process
        .client
        .create_region("kv", "standalone", &[])
        .await
        .expect("create region");
    let wire = WireClient::connect(&format!("127.0.0.1:{port}"), TIMEOUT)
        .await
        .expect("connect");
    wire.put("kv", b"k", b"before").await.expect("put");
    process.kill();
    let lost = wire.put("kv", b"k", b"lost").await.expect_err("no node");
    assert!(lost.is_unreachable(), "{lost}");
    let process = NodeProcess::start(node_binary!(), dir.path(), port)
        .await
        .expect("node restarts");
    // The same client, clones included, works again on a new connection.
    let clone = wire.clone();
    assert_eq!(
        clone
            .get("kv", b"k", Consistency::Linearizable)
            .await
            .expect("get after the restart"),
        Some(b"before".to_vec())
    );
    wire.put("kv", b"k", b"after").await.expect("put");
    drop(process);
}

async fn node_with_limits(
    adjust: impl FnOnce(&mut NodeConfig),
) -> (TestNode, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = NodeConfig::new(1, dir.path().to_path_buf());
    config.value_bytes_max = 1024;
    config.key_bytes_max = 64;
    adjust(&mut config);
    let node = TestNode::start(config).await.expect("node starts");
    node.client
        .create_region("kv", "standalone", &[])
        .await
        .expect("create region");
    let address = node.client.base().trim_start_matches("http://").to_string();
    (node, address, dir)
}

/// Reads until the node closes the connection; returns the connection
/// error it sent first, if any.
async fn error_then_close(
    stream: &mut tokio::net::TcpStream,
    within: Duration,
) -> Result<Option<String>, &'static str> {
    tokio::time::timeout(within, async {
        let first = read_response(stream).await;
        let code = first.map(|response| {
            assert_eq!(response.id, CONNECTION_ERROR_ID);
            response.result.expect_err("an error").code
        });
        if code.is_some() {
            assert!(read_response(stream).await.is_none(), "then closed");
        }
        code
    })
    .await
    .map_err(|_| "still open")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_partial_frame_held_past_the_limit_is_closed() {
    let (node, address, _dir) = node_with_limits(|config| {
        config.connections.wire_frame_timeout = Duration::from_millis(300);
    })
    .await;
    let mut stream = tokio::net::TcpStream::connect(&address)
        .await
        .expect("connect");
    stream.write_all(&opening(None)).await.expect("magic");
    stream
        .write_all(&1000u32.to_be_bytes())
        .await
        .expect("length");
    stream.write_all(&[1u8; 10]).await.expect("a few bytes");
    let started = std::time::Instant::now();
    let code = error_then_close(&mut stream, Duration::from_secs(3))
        .await
        .expect("the node closes a frame that never completes");
    assert_eq!(code.as_deref(), Some("timeout"));
    eprintln!("closed after {:?}", started.elapsed());
    // A client that keeps its frames whole is not affected.
    let client = WireClient::connect(&address, TIMEOUT)
        .await
        .expect("connect");
    client.put("kv", b"k", b"v").await.expect("write");
    tokio::time::sleep(Duration::from_millis(600)).await;
    client.put("kv", b"k", b"w").await.expect("still open");
    let status = node.client.status().await.expect("status");
    assert!(
        status["api"]["wire_timeouts"].as_u64().unwrap_or(0) >= 1,
        "{status}"
    );
    node.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_wire_connection_is_closed() {
    let (node, address, _dir) = node_with_limits(|config| {
        config.connections.wire_idle_timeout = Duration::from_millis(300);
    })
    .await;
    let mut stream = tokio::net::TcpStream::connect(&address)
        .await
        .expect("connect");
    stream.write_all(&opening(None)).await.expect("magic");
    let code = error_then_close(&mut stream, Duration::from_secs(3))
        .await
        .expect("an idle connection is closed");
    assert_eq!(code.as_deref(), Some("timeout"));
    node.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_frame_larger_than_any_request_is_refused_before_its_body() {
    let (node, address, _dir) = node_with_limits(|_| {}).await;
    let limit = synod::wire::request_frame_bytes_max(&node.node);
    assert!(limit < FRAME_BYTES_MAX, "far below the protocol's cap");
    let mut stream = tokio::net::TcpStream::connect(&address)
        .await
        .expect("connect");
    stream.write_all(&opening(None)).await.expect("magic");
    let length = u32::try_from(limit + 1).expect("fits");
    stream
        .write_all(&length.to_be_bytes())
        .await
        .expect("length");
    let code = error_then_close(&mut stream, Duration::from_secs(2))
        .await
        .expect("refused at once");
    assert_eq!(code.as_deref(), Some("malformed_frame"));
    node.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_in_flight_byte_bound_throttles_without_losing_requests() {
    // One request's worth in flight: requests are read one at a time,
    // and every one is still answered.
    let (node, address, _dir) = node_with_limits(|config| {
        config.connections.wire_in_flight_bytes_max = 1;
    })
    .await;
    let client = WireClient::connect(&address, TIMEOUT)
        .await
        .expect("connect");
    let mut writes = tokio::task::JoinSet::new();
    for i in 0..200 {
        let client = client.clone();
        writes.spawn(async move { client.put("kv", format!("k{i}").as_bytes(), b"v").await });
    }
    while let Some(result) = writes.join_next().await {
        result.expect("task").expect("every request answered");
    }
    node.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_holds_at_most_its_in_flight_bytes() {
    let bound = 16 * 1024;
    let (node, address, _dir) = node_with_limits(|config| {
        config.connections.wire_in_flight_bytes_max = bound;
    })
    .await;
    // 200 requests of about 1 KiB, sent in one burst, far more than the
    // bound: the node reads only while under it.
    let mut stream = tokio::net::TcpStream::connect(&address)
        .await
        .expect("connect");
    let mut burst = opening(None);
    for id in 1..=200u64 {
        burst.extend(frame(&Request {
            id,
            region: "kv".into(),
            op: Op::put(format!("k{id}").as_bytes(), &[b'v'; 1000]),
        }));
    }
    stream.write_all(&burst).await.expect("burst");
    for _ in 0..200 {
        let response = read_response(&mut stream).await.expect("an answer");
        assert!(response.result.is_ok(), "{response:?}");
    }
    let status = node.client.status().await.expect("status");
    let peak = status["api"]["wire_in_flight_bytes_peak"]
        .as_u64()
        .expect("peak");
    eprintln!("in-flight peak {peak} bytes");
    assert!(
        peak > 0 && peak <= (bound + 1100) as u64,
        "in flight at most the bound plus one request: {status}"
    );
    node.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_does_not_read_its_answers_is_closed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = NodeConfig::new(1, dir.path().to_path_buf());
    config.connections.wire_frame_timeout = Duration::from_millis(500);
    let node = TestNode::start(config).await.expect("node starts");
    node.client
        .create_region("kv", "standalone", &[])
        .await
        .expect("create region");
    let address = node.client.base().trim_start_matches("http://").to_string();
    let value = "v".repeat(1 << 20);
    node.client.put("kv", "big", &value).await.expect("put");
    // 64 reads of 1 MiB each, and the answers are never read.
    let mut stream = tokio::net::TcpStream::connect(&address)
        .await
        .expect("connect");
    let mut burst = opening(None);
    for id in 1..=64u64 {
        burst.extend(frame(&Request {
            id,
            region: "kv".into(),
            op: Op::get(b"big", Consistency::Local),
        }));
    }
    stream.write_all(&burst).await.expect("burst");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = node.client.status().await.expect("status");
        if status["api"]["wire_timeouts"].as_u64().unwrap_or(0) >= 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the connection is still held: {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(stream);
    node.stop().await.expect("stop");
}
