//! Garbage, truncated, oversized and unauthenticated input on the node
//! port closes that connection with a log line; the node keeps serving.
//! Every node here runs mutual TLS, as every cluster does.

use std::time::Duration;

use synod::control::record::NodeRecord;
use synod::node::NodeConfig;
use synod::transport::{FRAME_BYTES_MAX, Frame, HANDSHAKE_FRAME_BYTES_MAX, TRANSPORT_VERSION};
use synod_tests::{TestNode, free_port, secure};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn node() -> (TestNode, tempfile::TempDir, u16) {
    node_with(|_| {}).await
}

async fn node_with(adjust: impl FnOnce(&mut NodeConfig)) -> (TestNode, tempfile::TempDir, u16) {
    secure_node(1, adjust).await
}

/// Node `id` with TLS and tokens from `<dir>/secrets` (certificates for
/// nodes 1, 2, 3 and 5), knowing node 2 as a peer.
async fn secure_node(
    id: u64,
    adjust: impl FnOnce(&mut NodeConfig),
) -> (TestNode, tempfile::TempDir, u16) {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port().expect("port");
    let mut config = NodeConfig::new(id, dir.path().join("data"));
    adjust(&mut config);
    config.peer_listen = Some(format!("127.0.0.1:{port}").parse().expect("address"));
    config.peer_address = format!("127.0.0.1:{port}");
    // Node 2 is a known peer that never comes; this node alone votes.
    config.bootstrap = vec![
        (
            id,
            NodeRecord {
                api: "127.0.0.1:1".into(),
                peer: config.peer_address.clone(),
            },
        ),
        (
            2,
            NodeRecord {
                api: "127.0.0.1:1".into(),
                peer: "127.0.0.1:1".into(),
            },
        ),
    ];
    config.control.voters = vec![id];
    let credentials =
        secure(&mut config, &dir.path().join("secrets"), &[1, 2, 3, 5]).expect("secrets");
    let node = TestNode::start_secure(config, "127.0.0.1:0", &credentials)
        .await
        .expect("node");
    (node, dir, port)
}

/// Sends `bytes` and waits until the node closes the connection.
async fn closed_after(port: u16, bytes: &[u8]) -> bool {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let _ = stream.write_all(bytes).await;
    let mut buffer = [0u8; 1024];
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return true,
                Ok(_) => continue,
            }
        }
    });
    read.await.unwrap_or(false)
}

fn framed(payload: &[u8]) -> Vec<u8> {
    let mut bytes = (payload.len() as u32).to_be_bytes().to_vec();
    bytes.extend_from_slice(payload);
    bytes
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_closes_the_connection_and_the_node_keeps_serving() {
    let (node, _dir, port) = node().await;
    node.client
        .create_region("r", "standalone", &[])
        .await
        .expect("region");

    assert!(
        closed_after(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await,
        "plain garbage"
    );
    assert!(
        closed_after(port, &framed(&[0xff; 64])).await,
        "undecodable frame"
    );
    let oversized = ((FRAME_BYTES_MAX + 1) as u32).to_be_bytes();
    assert!(
        closed_after(port, &oversized).await,
        "oversized length header"
    );
    // A data frame before the handshake is refused.
    let early = Frame::Control {
        id: 1,
        reply: false,
        body: Default::default(),
    }
    .encode();
    assert!(
        closed_after(port, &framed(&early)).await,
        "frame before the handshake"
    );
    // A truncated frame: the length promises more than arrives, then EOF.
    let mut truncated = 100u32.to_be_bytes().to_vec();
    truncated.extend_from_slice(&[1, 2, 3]);
    {
        let mut stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        stream.write_all(&truncated).await.expect("write");
        stream.shutdown().await.expect("shutdown");
    }
    // A peer without a certificate (a plain-TCP hello) gets nowhere.
    let hello = Frame::Hello {
        version: TRANSPORT_VERSION,
        node_id: 2,
    };
    assert!(closed_after(port, &framed(&hello.encode())).await, "no TLS");

    tokio::time::sleep(Duration::from_millis(200)).await;
    let status = node.client.status().await.expect("status");
    assert!(
        status["transport"]["rejected_connections"]
            .as_u64()
            .unwrap_or(0)
            >= 4,
        "refusals are counted: {status}"
    );
    node.client
        .put("r", "k", "v")
        .await
        .expect("the node still serves");
    assert_eq!(
        node.client
            .get("r", "k", "linearizable")
            .await
            .expect("read"),
        Some("v".into())
    );
    node.stop().await.expect("stop");
}

/// Whether the node closes `stream` within `within` (reads end or fail).
async fn closes_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buffer = [0u8; 1024];
    let read = tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    });
    read.await.is_ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_huge_length_prefix_before_the_handshake_closes_at_once() {
    let (node, _dir, port) = node().await;
    // A length any authenticated peer may send, but not a stranger: the
    // node must not wait (or buffer) for 64 MiB of an unauthenticated frame.
    for length in [FRAME_BYTES_MAX, HANDSHAKE_FRAME_BYTES_MAX + 1] {
        let mut stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        stream
            .write_all(&(length as u32).to_be_bytes())
            .await
            .expect("write");
        stream.write_all(&[0u8; 512]).await.expect("write");
        let started = std::time::Instant::now();
        assert!(
            closes_within(&mut stream, Duration::from_secs(1)).await,
            "a {length}-byte frame before the handshake is refused at once"
        );
        eprintln!("closed after {:?}", started.elapsed());
    }
    node.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_over_the_handshake_cap_are_closed_at_once() {
    let (node, _dir, port) = node_with(|config| config.transport.handshakes_max = 2).await;
    // Two strangers sit in their handshake (they send nothing).
    let mut waiting = Vec::new();
    for _ in 0..2 {
        waiting.push(
            TcpStream::connect(("127.0.0.1", port))
                .await
                .expect("connect"),
        );
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut third = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    assert!(
        closes_within(&mut third, Duration::from_secs(1)).await,
        "a third connection waiting for its handshake is refused"
    );
    let status = node.client.status().await.expect("status");
    assert!(
        status["transport"]["refused_connections"]
            .as_u64()
            .unwrap_or(0)
            >= 1,
        "refusals are counted: {status}"
    );
    // Once the others time out or leave, a new one gets its turn.
    drop(waiting);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut later = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    assert!(
        !closes_within(&mut later, Duration::from_millis(500)).await,
        "room again once the waiting connections are gone"
    );
    node.stop().await.expect("stop");
}

/// Completes the dialer's side of the handshake with node `acceptor` as
/// node `me` (TLS with `me`'s certificate from `secrets`); returns the
/// authenticated stream.
pub async fn authenticated_peer(
    port: u16,
    me: u64,
    acceptor: u64,
    secrets: &std::path::Path,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    use synod::security::init;
    let (cert, key) = init::node_files(secrets, me);
    let tls = synod::security::NodeTls::load(&secrets.join(init::CA_CERT), &cert, &key)
        .expect("tls material");
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let name = rustls_pki_types::ServerName::try_from(synod::security::tls::node_name(acceptor))
        .expect("name");
    let mut stream = tls.peer_connector().connect(name, tcp).await.expect("tls");
    let hello = Frame::Hello {
        version: TRANSPORT_VERSION,
        node_id: me,
    };
    stream
        .write_all(&framed(&hello.encode()))
        .await
        .expect("hello");
    let mut length = [0u8; 4];
    stream.read_exact(&mut length).await.expect("welcome");
    let mut body = vec![0u8; u32::from_be_bytes(length) as usize];
    stream.read_exact(&mut body).await.expect("welcome");
    let Frame::Welcome { node_id } = Frame::decode(&body).expect("decodes") else {
        panic!("expected a welcome");
    };
    assert_eq!(node_id, acceptor);
    stream
}

#[tokio::test(flavor = "multi_thread")]
async fn inbound_messages_over_a_regions_byte_bound_are_dropped_and_counted() {
    // Node 5 accepts from node 2 (the lower id dials).
    let (node, dir, port) = secure_node(5, |_| {}).await;
    node.client
        .create_region("r", "standalone", &[])
        .await
        .expect("region");
    let mut peer = authenticated_peer(port, 2, 5, &dir.path().join("secrets")).await;
    // One batch over the inbox's byte bound: refused, not queued.
    let bytes = synod::region::driver::INBOX_MESSAGE_BYTES_MAX + 1;
    let flood = Frame::Messages {
        region: "r".into(),
        epoch: 1,
        data: vec![0u8; bytes].into(),
        ends: vec![bytes as u32],
    };
    peer.write_all(&framed(&flood.encode()))
        .await
        .expect("send");
    let small = Frame::Messages {
        region: "r".into(),
        epoch: 1,
        data: vec![1u8; 10].into(),
        ends: vec![10],
    };
    peer.write_all(&framed(&small.encode()))
        .await
        .expect("send");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = node.client.status().await.expect("status");
        let received = status["transport"]["frames_received"].as_u64().unwrap_or(0);
        if received >= 2 {
            assert_eq!(
                status["transport"]["regions"]["r"]["inbound_frames_dropped"].as_u64(),
                Some(1),
                "the oversized batch is dropped and counted, the small one is not: {status}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "frames never arrived: {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    node.client
        .put("r", "k", "v")
        .await
        .expect("the region still serves");
    node.stop().await.expect("stop");
}
