//! What the published reference clients send, byte for byte
//! (`shared/CAMP-PROTOCOL.md`, "The published reference clients"): accepted
//! and counted by default, as the reference server accepts it, and refused
//! with the exact checks in strict mode.

use std::time::Duration;

use bytes::Bytes;
use camp_server::metrics::Tolerated;
use camp_server::protocol::{Behaviour, Body};
use camp_server::server::Server;
use tokio::io::AsyncReadExt;
use tokio_tungstenite::tungstenite::Message as Ws;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::common::{RawPeer, TOKEN, TestServer};

/// Bytes from hex (spaces ignored).
fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// An echo server, strict or not.
async fn echo_server(strict: bool) -> TestServer {
    TestServer::echo(Server::builder().strict(strict)).await
}

/// Upgrades as the browser client does for sid 0x1092 (4242): no CAMP
/// handshake of its own; returns the ack id of our ENDPOINT_INFO.
async fn browser(server: &TestServer) -> (RawPeer, u32) {
    let mut peer = RawPeer::upgrade(
        server.addr,
        &format!("authorization=Bearer%20{TOKEN}&x-camp-sid=4242"),
    )
    .await
    .unwrap();
    peer.sid = 4242;
    let info = peer.recv().await;
    let Body::EndpointInfo { ack, .. } = info.body else {
        panic!("{info:?}")
    };
    (peer, ack)
}

#[tokio::test]
async fn the_browser_client_handshakes_implicitly() {
    let server = echo_server(false).await;
    let (mut peer, info_ack) = browser(&server).await;
    assert_eq!(info_ack, 0, "the first ack id, as in the reference capture");
    // -> 0000000000001092 fd 00000000   (its ACK)
    peer.send_raw(hex("0000000000001092 fd 00000000")).await;
    // -> 0000000000001092 fa 00000000 6869   (UTF8DATA "hi")
    peer.send_raw(hex("0000000000001092 fa 00000000 6869"))
        .await;
    assert_eq!(peer.recv().await.body, Body::Ack { acked: 0 });
    let echo = peer.recv_data().await;
    assert!(
        matches!(&echo.body, Body::Utf8 { text, .. } if text == "hi"),
        "{echo:?}"
    );
    assert_eq!(echo.sid, 4242);
    let metrics = server.server.metrics();
    assert_eq!(metrics.tolerated_count(Tolerated::ImplicitHandshake), 1);
    let text = camp_server::admin::render_metrics(&server.server, None);
    assert!(
        text.contains("camp_protocol_tolerated_total{kind=\"implicit_handshake\"} 1"),
        "{text}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn strict_mode_refuses_the_implicit_handshake() {
    let server = echo_server(true).await;
    let (mut peer, _) = browser(&server).await;
    peer.send_raw(hex("0000000000001092 fd 00000000")).await;
    peer.send_raw(hex("0000000000001092 fa 00000000 6869"))
        .await;
    let bye = peer.recv_data().await;
    assert!(
        matches!(&bye.body, Body::Bye { reason, .. } if reason.contains("expected ENDPOINT_INFO")),
        "{bye:?}"
    );
    assert_eq!(peer.closed().await.0, 4001);
    server.shutdown().await;
}

#[tokio::test]
async fn data_before_our_endpoint_info_is_acked_is_still_refused() {
    let server = echo_server(false).await;
    let (mut peer, _) = browser(&server).await;
    // No ACK of our ENDPOINT_INFO first: not the browser client's sequence.
    peer.send_raw(hex("0000000000001092 fa 00000000 6869"))
        .await;
    let bye = peer.recv_data().await;
    assert!(matches!(bye.body, Body::Bye { .. }), "{bye:?}");
    assert_eq!(peer.closed().await.0, 4001);
    server.shutdown().await;
}

/// Sends the Node client's PUSH of "AAAA" + "BBBB" with the second chunk at
/// offset 5 (true position 4), exactly as captured.
async fn node_push(peer: &mut RawPeer) {
    let sid = format!("{:016x}", peer.sid);
    // TX_START PUSH, size -1, name "push-repro"
    let name: String = b"push-repro".iter().map(|b| format!("{b:02x}")).collect();
    peer.send_raw(hex(&format!(
        "{sid} 00 00000001 00000000 ffffffffffffffff 00 {name}"
    )))
    .await;
    peer.send_raw(hex(&format!("{sid} 01 00000000 0000000000000000 41414141")))
        .await;
    peer.send_raw(hex(&format!("{sid} 01 00000000 0000000000000005 42424242")))
        .await;
    // TX_FINISH
    peer.send_raw(hex(&format!("{sid} 02 00000002 00000000")))
        .await;
}

#[tokio::test]
async fn node_client_push_offsets_are_appended_in_arrival_order() {
    let (server, mut sessions) = TestServer::with_sessions(Server::builder().tokens([TOKEN])).await;
    let mut peer = RawPeer::connect(server.addr, 31).await;
    let (session, _events) = sessions.recv().await.unwrap();
    let waiting = session.wait_for_stream("push-repro", Duration::from_secs(5));
    node_push(&mut peer).await;
    let mut stream = waiting.await.expect("the stream arrives");
    let mut got = Vec::new();
    stream.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"AAAABBBB");
    assert_eq!(
        server
            .server
            .metrics()
            .tolerated_count(Tolerated::PushOffset),
        1
    );
    server.shutdown().await;
}

#[tokio::test]
async fn the_browser_clients_end_offsets_are_accepted_but_real_gaps_are_not() {
    let (server, mut sessions) = TestServer::with_sessions(Server::builder().tokens([TOKEN])).await;
    let mut peer = RawPeer::connect(server.addr, 32).await;
    let (session, _events) = sessions.recv().await.unwrap();
    let chunk = |tx_id, offset, data: &'static [u8]| Body::TxChunk {
        tx_id,
        offset,
        data: Bytes::from_static(data),
    };
    let start = |tx_id, name: &str| Body::TxStart {
        ack: tx_id,
        tx_id,
        size: -1,
        behaviour: Behaviour::Push,
        name: name.into(),
    };
    // The browser client writes each chunk's end offset.
    let waiting = session.wait_for_stream("ends", Duration::from_secs(5));
    peer.send(start(1, "ends")).await;
    peer.send(chunk(1, 3, b"abc")).await;
    peer.send(chunk(1, 6, b"def")).await;
    peer.send(Body::TxFinish { ack: 9, tx_id: 1 }).await;
    let mut got = Vec::new();
    waiting.await.unwrap().read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"abcdef");
    // A real gap is still a gap: the stream is cancelled.
    peer.send(start(3, "gap")).await;
    peer.send(chunk(3, 0, b"abc")).await;
    peer.send(chunk(3, 10, b"def")).await;
    loop {
        let frame = peer.recv_data().await;
        match frame.body {
            Body::Error { message, .. } => assert!(message.contains("gap"), "{message}"),
            Body::TxCancel { tx_id: 3, .. } => break,
            other => panic!("{other:?}"),
        }
    }
    server.shutdown().await;
}

#[tokio::test]
async fn strict_mode_refuses_the_node_clients_offsets() {
    let (server, mut sessions) =
        TestServer::with_sessions(Server::builder().tokens([TOKEN]).strict(true)).await;
    let mut peer = RawPeer::connect(server.addr, 33).await;
    let (session, _events) = sessions.recv().await.unwrap();
    let waiting = session.wait_for_stream("push-repro", Duration::from_secs(5));
    node_push(&mut peer).await;
    let (mut saw_error, mut saw_cancel) = (false, false);
    while !(saw_error && saw_cancel) {
        let frame = peer.recv_data().await;
        match frame.body {
            Body::Error { message, .. } => {
                assert!(
                    message.contains("chunk at offset 5 leaves a gap"),
                    "{message}"
                );
                saw_error = true;
            }
            Body::TxCancel { .. } => saw_cancel = true,
            other => panic!("{other:?}"),
        }
    }
    let mut stream = waiting.await.expect("the stream was announced");
    let mut got = Vec::new();
    let failed = stream.read_to_end(&mut got).await.unwrap_err();
    assert_eq!(failed.kind(), std::io::ErrorKind::InvalidData);
    server.shutdown().await;
}

#[tokio::test]
async fn frames_with_a_foreign_sid_are_handled_for_the_connections_session() {
    let server = echo_server(false).await;
    let mut peer = RawPeer::connect(server.addr, 7).await;
    // The Node client's own random sid in every frame.
    peer.sid = 0x5eed;
    peer.send(Body::Utf8 {
        ack: 5,
        text: "mine".into(),
    })
    .await;
    assert_eq!(peer.recv().await.body, Body::Ack { acked: 5 });
    let echo = peer.recv_data().await;
    assert!(matches!(&echo.body, Body::Utf8 { text, .. } if text == "mine"));
    assert_eq!(echo.sid, 7, "we send the session's sid");
    assert_eq!(
        server
            .server
            .metrics()
            .tolerated_count(Tolerated::ForeignSid),
        1
    );
    server.shutdown().await;

    let server = echo_server(true).await;
    let mut peer = RawPeer::connect(server.addr, 7).await;
    peer.sid = 0x5eed;
    peer.send(Body::Utf8 {
        ack: 5,
        text: "mine".into(),
    })
    .await;
    let error = peer.recv_data().await;
    assert!(
        matches!(&error.body, Body::Error { message, .. } if message.contains("frame for session 24301")),
        "{error:?}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn the_stock_node_clients_x_cryo_sid_is_accepted_unless_strict() {
    let server = echo_server(false).await;
    let mut peer = RawPeer::upgrade(
        server.addr,
        &format!("authorization=Bearer%20{TOKEN}&x-cryo-sid=5"),
    )
    .await
    .expect("accepted");
    let info = peer.recv().await;
    assert_eq!(info.sid, 5);
    assert_eq!(
        server
            .server
            .metrics()
            .tolerated_count(Tolerated::LegacySidParam),
        1
    );
    server.shutdown().await;

    let server = echo_server(true).await;
    let refused = RawPeer::upgrade(
        server.addr,
        &format!("authorization=Bearer%20{TOKEN}&x-cryo-sid=5"),
    )
    .await
    .err();
    assert_eq!(refused, Some(400));
    server.shutdown().await;
}

#[tokio::test]
async fn a_websocket_close_is_answered_whatever_its_code() {
    let server = echo_server(false).await;
    for (sid, code) in [(41, CloseCode::Normal), (42, CloseCode::Away)] {
        let mut peer = RawPeer::connect(server.addr, sid).await;
        use futures_util::SinkExt;
        peer.ws
            .send(Ws::Close(Some(CloseFrame {
                code,
                reason: "bye".into(),
            })))
            .await
            .unwrap();
        let (answer, _) = peer.closed().await;
        assert_eq!(answer, u16::from(code), "our close echoes the peer's code");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn a_client_that_attaches_its_reader_late_connects_every_time() {
    let server = echo_server(false).await;
    for sid in 1000..1100u64 {
        let mut peer = RawPeer::upgrade(
            server.addr,
            &format!("authorization=Bearer%20{TOKEN}&x-camp-sid={sid}"),
        )
        .await
        .unwrap();
        peer.sid = sid;
        // Like the Node client: whatever arrives before the listener is
        // attached is lost (our ENDPOINT_INFO comes right after the 101).
        let _ = tokio::time::timeout(Duration::from_millis(5), async {
            use futures_util::StreamExt;
            while peer.ws.next().await.is_some() {}
        })
        .await;
        // Then it sends its own ENDPOINT_INFO (without having ACKed ours).
        peer.send(Body::EndpointInfo {
            ack: 0,
            version: 1,
            features: 1,
        })
        .await;
        let mut connected = false;
        for _ in 0..4 {
            if let Body::EndpointInfo { ack, .. } = peer.recv().await.body {
                peer.send(Body::Ack { acked: ack }).await;
                connected = true;
                break;
            }
        }
        assert!(connected, "session {sid} never saw our ENDPOINT_INFO");
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_awaiting_an_ack_while_the_peer_sends_ahead_does_not_hang() {
    let (server, mut sessions) = TestServer::with_sessions(Server::builder().tokens([TOKEN])).await;
    let mut peer = RawPeer::connect(server.addr, 77).await;
    let (session, mut events) = sessions.recv().await.unwrap();
    // The application waits for the peer's ACK of its first message
    // before it reads any event.
    let app = tokio::spawn(async move {
        let acked = session.send_utf8("first").acked().await;
        let mut got = Vec::new();
        while got.len() < 300 {
            match events.next_message().await.expect("session open") {
                camp_server::extension::Message::Utf8(t) => got.push(t),
                other => panic!("{other:?}"),
            }
        }
        (acked, got, session)
    });
    let first = peer.recv_data().await;
    let Body::Utf8 { ack: first_ack, .. } = first.body else {
        panic!("{first:?}")
    };
    // 300 messages ahead of the ACK: more than the event channel holds.
    for i in 0..300u32 {
        peer.send(Body::Utf8 {
            ack: i,
            text: format!("m{i}"),
        })
        .await;
    }
    peer.send(Body::Ack { acked: first_ack }).await;
    let (acked, got, session) = tokio::time::timeout(Duration::from_secs(15), app)
        .await
        .expect("the session kept serving: no hang")
        .unwrap();
    // Either the ACK was read in time or the ack expired (2.5 s): both end
    // the wait; every message arrived, in order.
    let _ = acked;
    assert_eq!(got, (0..300).map(|i| format!("m{i}")).collect::<Vec<_>>());
    assert!(!session.is_closed());
    server.shutdown().await;
}

#[tokio::test]
async fn the_browser_clients_streams_work_after_an_implicit_handshake() {
    let (server, mut sessions) = TestServer::with_sessions(Server::builder().tokens([TOKEN])).await;
    let (mut peer, info_ack) = browser(&server).await;
    peer.send(Body::Ack { acked: info_ack }).await;
    // Its first frame after the ACK is a UTF8DATA: no feature announced.
    peer.send(Body::Utf8 {
        ack: 0,
        text: "hi".into(),
    })
    .await;
    let (session, mut events) = sessions.recv().await.unwrap();
    assert_eq!(
        events.next_message().await,
        Some(camp_server::extension::Message::Utf8("hi".into()))
    );
    assert_eq!(session.peer_features(), 0);
    // Then a stream: the transactions feature is learnt from it instead of
    // closing with 4002.
    let waiting = session.wait_for_stream("later", Duration::from_secs(5));
    peer.send(Body::TxStart {
        ack: 1,
        tx_id: 0,
        size: 3,
        behaviour: Behaviour::Push,
        name: "later".into(),
    })
    .await;
    peer.send(Body::TxChunk {
        tx_id: 0,
        offset: 0,
        data: Bytes::from_static(b"abc"),
    })
    .await;
    peer.send(Body::TxFinish { ack: 2, tx_id: 0 }).await;
    let mut got = Vec::new();
    waiting
        .await
        .expect("the stream arrives")
        .read_to_end(&mut got)
        .await
        .unwrap();
    assert_eq!(got, b"abc");
    assert_eq!(
        session.peer_features() & camp_server::protocol::FEATURE_TRANSACTIONS,
        camp_server::protocol::FEATURE_TRANSACTIONS
    );
    server.shutdown().await;
}

#[tokio::test]
async fn an_announcement_after_an_implicit_handshake_is_the_peers_word() {
    let server = echo_server(false).await;
    let (mut peer, info_ack) = browser(&server).await;
    peer.send(Body::Ack { acked: info_ack }).await;
    peer.send(Body::Utf8 {
        ack: 0,
        text: "hi".into(),
    })
    .await;
    // It announces no transactions after all: a stream is refused as from
    // any peer that did not announce them.
    peer.send(Body::EndpointInfo {
        ack: 1,
        version: 1,
        features: 0,
    })
    .await;
    peer.send(Body::TxStart {
        ack: 2,
        tx_id: 0,
        size: -1,
        behaviour: Behaviour::Push,
        name: "s".into(),
    })
    .await;
    loop {
        match peer.recv_data().await.body {
            Body::Bye { .. } => break,
            Body::Utf8 { .. } => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(peer.closed().await.0, 4002);
    server.shutdown().await;
}
