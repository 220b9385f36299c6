//! The server and sessions over real sockets: upgrade refusals, handshake,
//! ACKs, heartbeat, messages both ways, BYE, malformed input, the store,
//! statistics and graceful shutdown.

use std::time::Duration;

use crate::common::{RawPeer, TOKEN, TestServer};
use bytes::Bytes;
use camp_server::client::{Client, ClientError};
use camp_server::extension::Message;
use camp_server::protocol::{Body, Frame, PingPong, close};
use camp_server::server::Server;
use camp_server::session::{DeliveryError, SessionEvent};
use futures_util::SinkExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message as Ws;

async fn status(server: &TestServer, query: &str) -> u16 {
    match RawPeer::upgrade(server.addr, query).await {
        Ok(_) => 101,
        Err(status) => status,
    }
}

#[tokio::test]
async fn upgrade_refusals_have_clear_statuses() {
    let server = TestServer::echo(Server::builder()).await;
    assert_eq!(status(&server, "x-camp-sid=1").await, 401, "missing token");
    assert_eq!(
        status(&server, "authorization=Bearer%20nope&x-camp-sid=1").await,
        401,
        "rejected token"
    );
    assert_eq!(
        status(&server, "authorization=secret&x-camp-sid=1").await,
        401,
        "no Bearer prefix"
    );
    assert_eq!(
        status(&server, "authorization=Bearer%20secret").await,
        400,
        "missing sid"
    );
    assert_eq!(
        status(&server, "authorization=Bearer%20secret&x-camp-sid=abc").await,
        400,
        "non-numeric sid"
    );
    assert_eq!(
        status(&server, "authorization=Bearer%20secret&x-camp-sid=-5").await,
        400,
        "negative sid"
    );
    assert_eq!(
        status(&server, "authorization=Bearer%20secret&X-CAMP-SID=7").await,
        101,
        "sid name in any case"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn duplicate_live_sid_is_refused_with_409_and_freed_after_close() {
    let server = TestServer::echo(Server::builder()).await;
    let first = RawPeer::connect(server.addr, 42).await;
    let query = format!("authorization=Bearer%20{TOKEN}&x-camp-sid=42");
    assert_eq!(status(&server, &query).await, 409);
    drop(first);
    // The id is released once the first connection ends.
    let mut ok = false;
    for _ in 0..50 {
        if status(&server, &query).await == 101 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok, "sid 42 was never released");
    server.shutdown().await;
}

#[tokio::test]
async fn refusal_bodies_are_short_text_and_plain_http_gets_426() {
    let server = TestServer::echo(Server::builder()).await;
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    tcp.read_to_string(&mut text).await.unwrap();
    assert!(text.starts_with("HTTP/1.1 426 "), "{text}");
    assert!(
        text.ends_with("this endpoint only speaks CAMP over WebSocket\n"),
        "{text}"
    );

    let err = Client::new(server.url(), "wrong")
        .connect()
        .await
        .unwrap_err();
    match err {
        ClientError::Refused { status, body } => {
            assert_eq!((status, body.as_str()), (401, "token rejected"))
        }
        other => panic!("{other}"),
    }
    server.shutdown().await;
}

#[tokio::test]
async fn subprotocol_camp_is_negotiated_and_others_refused() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let server = TestServer::echo(Server::builder()).await;
    let url = format!(
        "ws://{}/?authorization=Bearer%20secret&x-camp-sid=9",
        server.addr
    );
    let mut req = url.clone().into_client_request().unwrap();
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", "camp".parse().unwrap());
    let (_ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(resp.headers()["sec-websocket-protocol"], "camp");

    let mut req = url
        .replace("sid=9", "sid=10")
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", "chat".parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 400),
        other => panic!("expected 400, got {:?}", other.map(|_| ())),
    }
    server.shutdown().await;
}

#[tokio::test]
async fn async_validator_sees_the_token_without_bearer() {
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let builder = Server::builder().validator(move |token: String| {
        let seen_tx = seen_tx.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            let ok = token == "async-ok";
            let _ = seen_tx.send(token);
            ok
        }
    });
    let (server, _incoming) = builder.build();
    let server = TestServer::start(server).await;
    assert!(
        Client::new(server.url(), "async-ok")
            .connect()
            .await
            .is_ok()
    );
    assert!(
        Client::new(server.url(), "async-no")
            .connect()
            .await
            .is_err()
    );
    assert_eq!(seen.recv().await.unwrap(), "async-ok");
    assert_eq!(seen.recv().await.unwrap(), "async-no");
    server.shutdown().await;
}

#[tokio::test]
async fn handshake_stores_client_flags_and_rejects_other_versions() {
    let (server, mut incoming) = Server::builder().tokens([TOKEN]).build();
    let server = TestServer::start(server).await;
    let _peer = RawPeer::connect(server.addr, 5).await;
    let (session, _events) = incoming.next().await.unwrap();
    assert_eq!((session.id(), session.peer_features()), (5, 1));
    assert!(session.remote_addr().unwrap().ip().is_loopback());

    let mut bad = RawPeer::upgrade(server.addr, "authorization=Bearer%20secret&x-camp-sid=6")
        .await
        .unwrap();
    bad.sid = 6;
    let _info = bad.recv().await;
    bad.send(Body::EndpointInfo {
        ack: 0,
        version: 2,
        features: 0,
    })
    .await;
    assert_eq!(bad.recv().await.body, Body::Ack { acked: 0 });
    let bye = bad.recv_data().await;
    assert!(matches!(bye.body, Body::Bye { ref reason, .. } if reason.contains("version 2")));
    let (code, reason) = bad.closed().await;
    assert_eq!(code, close::CLIENT_ERROR);
    assert!(
        reason.contains("unsupported protocol version 2"),
        "{reason}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn data_before_the_handshake_closes_with_4001() {
    let server = TestServer::echo(Server::builder()).await;
    let mut peer = RawPeer::upgrade(server.addr, "authorization=Bearer%20secret&x-camp-sid=3")
        .await
        .unwrap();
    peer.sid = 3;
    let _info = peer.recv().await;
    peer.send(Body::Utf8 {
        ack: 0,
        text: "too early".into(),
    })
    .await;
    let (code, reason) = peer.closed().await;
    assert_eq!(code, 4001);
    assert!(reason.contains("expected ENDPOINT_INFO"), "{reason}");
    server.shutdown().await;
}

#[tokio::test]
async fn every_tracked_frame_is_acked_and_messages_echo_in_both_kinds() {
    let server = TestServer::echo(Server::builder()).await;
    let mut peer = RawPeer::connect(server.addr, 11).await;
    peer.send(Body::Utf8 {
        ack: 100,
        text: "héllo".into(),
    })
    .await;
    assert_eq!(peer.recv().await.body, Body::Ack { acked: 100 });
    let echo = peer.recv().await;
    let Body::Utf8 { ack, text } = echo.body else {
        panic!("{echo:?}")
    };
    assert_eq!((echo.sid, text.as_str()), (11, "héllo"));
    peer.send(Body::Ack { acked: ack }).await;

    peer.send(Body::Binary {
        ack: 101,
        data: Bytes::from_static(&[0, 1, 255]),
    })
    .await;
    assert_eq!(peer.recv().await.body, Body::Ack { acked: 101 });
    let Body::Binary { ack: ack2, data } = peer.recv().await.body else {
        panic!()
    };
    assert_eq!(&data[..], &[0, 1, 255]);
    assert_eq!(ack2, ack.wrapping_add(1), "ack ids increment");

    peer.send(Body::Error {
        ack: 102,
        message: "oops".into(),
    })
    .await;
    assert_eq!(peer.recv().await.body, Body::Ack { acked: 102 });
    let Body::Utf8 { text, .. } = peer.recv().await.body else {
        panic!()
    };
    assert_eq!(text, "error:oops", "error frames reach the application");
    server.shutdown().await;
}

#[tokio::test]
async fn ten_thousand_pipelined_messages_are_acked_and_delivered_in_order() {
    let (server, mut incoming) = Server::builder().tokens([TOKEN]).build();
    let server = TestServer::start(server).await;
    let (client, _client_events) = Client::new(server.url(), TOKEN)
        .sid(77)
        .connect()
        .await
        .unwrap();
    let (_session, mut events) = incoming.next().await.unwrap();
    const N: usize = 10_000;
    let deliveries: Vec<_> = (0..N).map(|i| client.send_utf8(format!("m{i}"))).collect();
    for i in 0..N {
        assert_eq!(
            events.next_message().await,
            Some(Message::Utf8(format!("m{i}")))
        );
    }
    for d in deliveries {
        d.acked().await.expect("acked");
    }
    let stats = client.stats();
    assert_eq!(stats.ack_timeouts, 0);
    server.shutdown().await;
}

#[tokio::test]
async fn ping_is_answered_with_pong_and_pong_is_not_answered() {
    let server = TestServer::echo(Server::builder()).await;
    let mut peer = RawPeer::connect(server.addr, 12).await;
    peer.send(Body::Ping(PingPong::Ping)).await;
    assert_eq!(peer.recv().await.body, Body::Ping(PingPong::Pong));
    peer.send(Body::Ping(PingPong::Pong)).await;
    peer.send(Body::Utf8 {
        ack: 1,
        text: "after".into(),
    })
    .await;
    // The next frame is the ACK of the text: nothing answered the pong.
    assert_eq!(peer.recv().await.body, Body::Ack { acked: 1 });
    server.shutdown().await;
}

#[tokio::test]
async fn heartbeat_pings_and_closes_a_silent_session() {
    let (server, mut incoming) = Server::builder()
        .tokens([TOKEN])
        .keep_alive(Duration::from_millis(200))
        .build();
    let server = TestServer::start(server).await;
    let mut peer = RawPeer::connect(server.addr, 13).await;
    let (_session, mut events) = incoming.next().await.unwrap();
    // The first tick: a PING and a statistics event.
    assert_eq!(peer.recv().await.body, Body::Ping(PingPong::Ping));
    peer.send(Body::Ping(PingPong::Pong)).await;
    match events.next().await.unwrap() {
        SessionEvent::Stats(s) => assert!(s.bytes_rx > 0 && s.bytes_tx > 0, "{s:?}"),
        other => panic!("expected stats, got {other:?}"),
    }
    // Then silence: the second tick sends a PING, the third closes.
    assert_eq!(peer.recv().await.body, Body::Ping(PingPong::Ping));
    let started = std::time::Instant::now();
    let bye = peer.recv_data().await;
    assert!(matches!(bye.body, Body::Bye { .. }));
    let (code, reason) = peer.closed().await;
    assert_eq!(code, 4001);
    assert!(reason.contains("heartbeat timeout"), "{reason}");
    assert!(started.elapsed() < Duration::from_millis(600));
    let closed = events.closed().await.unwrap();
    assert_eq!((closed.code, closed.by_peer), (4001, false));
    server.shutdown().await;
}

#[tokio::test]
async fn client_answers_server_heartbeat_and_stays_open() {
    let (server, mut incoming) = Server::builder()
        .tokens([TOKEN])
        .keep_alive(Duration::from_millis(100))
        .build();
    let server = TestServer::start(server).await;
    let (client, _events) = Client::new(server.url(), TOKEN).connect().await.unwrap();
    let (session, _) = incoming.next().await.unwrap();
    tokio::time::sleep(Duration::from_millis(550)).await;
    assert!(!session.is_closed() && !client.is_closed());
    let stats = session.stats();
    assert!(
        stats.rtt_ms.is_some(),
        "pings were acknowledged frames: {stats:?}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn bye_from_peer_is_acked_and_closes_with_4000() {
    let (server, mut incoming) = Server::builder().tokens([TOKEN]).build();
    let server = TestServer::start(server).await;
    let mut peer = RawPeer::connect(server.addr, 14).await;
    let (_session, mut events) = incoming.next().await.unwrap();
    peer.send(Body::Bye {
        ack: 55,
        reason: "client navigated away".into(),
    })
    .await;
    assert_eq!(peer.recv().await.body, Body::Ack { acked: 55 });
    assert_eq!(peer.closed().await, (4000, "client navigated away".into()));
    let info = events.closed().await.unwrap();
    assert_eq!(
        (info.code, info.reason.as_str(), info.by_peer),
        (4000, "client navigated away", true)
    );
    server.shutdown().await;
}

#[tokio::test]
async fn close_sends_bye_then_4000() {
    let (server, mut incoming) = Server::builder().tokens([TOKEN]).build();
    let server = TestServer::start(server).await;
    let mut peer = RawPeer::connect(server.addr, 15).await;
    let (session, mut events) = incoming.next().await.unwrap();
    session.close("maintenance");
    let bye = peer.recv_data().await;
    assert!(matches!(bye.body, Body::Bye { ref reason, .. } if reason == "maintenance"));
    assert_eq!(peer.closed().await, (4000, "maintenance".into()));
    assert_eq!(events.closed().await.unwrap().code, 4000);
    assert!(session.is_closed());
    let late = session.send_utf8("late").acked().await;
    assert_eq!(late, Err(DeliveryError::Closed));
    server.shutdown().await;
}

#[tokio::test]
async fn malformed_input_gets_error_frames_and_the_session_survives() {
    let server = TestServer::echo(Server::builder()).await;
    let mut peer = RawPeer::connect(server.addr, 16).await;
    let mut other = RawPeer::connect(server.addr, 17).await;

    let mut oversize = Frame::new(
        16,
        Body::Utf8 {
            ack: 1,
            text: String::new(),
        },
    )
    .encode()
    .to_vec();
    oversize.resize(13 + 1024 * 1024 + 1, b'a');
    let cases: Vec<(Ws, &str)> = vec![
        (Ws::Binary(Bytes::from(oversize)), "exceeds the limit"),
        (
            Ws::Binary(Bytes::from_static(&[1, 2, 3])),
            "truncated frame",
        ),
        (
            Ws::Binary(
                Bytes::from(Frame::new(16, Body::Ack { acked: 0 }).encode()[..9].to_vec())
                    .slice(..),
            ),
            "truncated ACK",
        ),
        (
            Ws::Binary(Bytes::from(
                [&16u64.to_be_bytes()[..], &[0x42, 0, 0, 0, 0]].concat(),
            )),
            "unknown frame type 0x42",
        ),
        (
            Ws::Binary(Bytes::from(
                [&16u64.to_be_bytes()[..], &[0xfa, 0, 0, 0, 1, 0xc3, 0x28]].concat(),
            )),
            "not valid UTF-8",
        ),
        (
            Ws::Binary(Bytes::from(
                [&16u64.to_be_bytes()[..], &[0xfb], b"pang"].concat(),
            )),
            "\"ping\" or \"pong\"",
        ),
        (Ws::Text("hello".into()), "text WebSocket messages"),
    ];
    for (msg, expected) in cases {
        peer.ws.send(msg).await.unwrap();
        let f = peer.recv().await;
        let Body::Error { ack, message } = f.body else {
            panic!("{expected}: got {f:?}")
        };
        assert!(
            message.contains(expected),
            "{message:?} should contain {expected:?}"
        );
        peer.send(Body::Ack { acked: ack }).await;
    }
    // Both sessions still work.
    for p in [&mut peer, &mut other] {
        p.send(Body::Utf8 {
            ack: 9,
            text: "still here".into(),
        })
        .await;
        assert_eq!(p.recv().await.body, Body::Ack { acked: 9 });
        assert!(matches!(p.recv().await.body, Body::Utf8 { ref text, .. } if text == "still here"));
    }
    server.shutdown().await;
}

#[tokio::test]
async fn a_flood_of_garbage_closes_with_4001() {
    let server = TestServer::echo(Server::builder()).await;
    let mut peer = RawPeer::connect(server.addr, 18).await;
    for _ in 0..100 {
        peer.send_raw(vec![0xde, 0xad]).await;
    }
    let (code, reason) = peer.closed().await;
    assert_eq!(code, 4001);
    assert!(reason.contains("too many malformed frames"), "{reason}");
    server.shutdown().await;
}

#[tokio::test]
async fn transaction_frames_from_a_peer_without_the_feature_close_with_4002() {
    let server = TestServer::echo(Server::builder()).await;
    let mut peer = RawPeer::upgrade(server.addr, "authorization=Bearer%20secret&x-camp-sid=19")
        .await
        .unwrap();
    peer.sid = 19;
    let Body::EndpointInfo { ack, .. } = peer.recv().await.body else {
        panic!()
    };
    peer.send(Body::Ack { acked: ack }).await;
    peer.send(Body::EndpointInfo {
        ack: 0,
        version: 1,
        features: 0,
    })
    .await;
    let _ = peer.recv().await;
    peer.send(Body::TxCancel { ack: 1, tx_id: 1 }).await;
    let (code, reason) = peer.closed().await;
    assert_eq!(code, 4002);
    assert!(
        reason.contains("did not announce the transactions feature"),
        "{reason}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn session_store_and_stats_and_closed_event() {
    let (server, mut incoming) = Server::builder().tokens([TOKEN]).build();
    let server = TestServer::start(server).await;
    let (client, _) = Client::new(server.url(), TOKEN)
        .sid(20)
        .connect()
        .await
        .unwrap();
    let (session, mut events) = incoming.next().await.unwrap();
    session.set("user", "ada");
    assert_eq!(
        server.server.session(20).unwrap().get("user").as_deref(),
        Some("ada")
    );
    assert_eq!(session.remove("user").as_deref(), Some("ada"));
    assert_eq!(session.get("user"), None);
    assert_eq!(server.server.sessions().len(), 1);

    let rtt = session.send_utf8("x").acked().await.unwrap();
    assert!(rtt < Duration::from_secs(1));
    client.close("bye");
    let info = events.closed().await.unwrap();
    assert_eq!(
        (info.code, info.reason.as_str(), info.by_peer),
        (4000, "bye", true)
    );
    assert!(session.stats().bytes_rx > 0 && session.stats().rtt_ms.is_some());
    server.shutdown().await;
}

#[tokio::test]
async fn graceful_shutdown_says_bye_to_every_session_and_returns() {
    let server = TestServer::echo(Server::builder()).await;
    let mut a = RawPeer::connect(server.addr, 21).await;
    let mut b = RawPeer::connect(server.addr, 22).await;
    let addr = server.addr;
    let stopping = tokio::spawn(server.shutdown());
    for p in [&mut a, &mut b] {
        let bye = p.recv_data().await;
        assert!(
            matches!(bye.body, Body::Bye { ref reason, .. } if reason == "server shutting down")
        );
        assert_eq!(p.closed().await.0, 4000);
    }
    tokio::time::timeout(Duration::from_secs(3), stopping)
        .await
        .unwrap()
        .unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
}

#[tokio::test]
async fn shutdown_during_a_handshake_closes_it_at_once() {
    let server = TestServer::echo(Server::builder()).await;
    let mut peer = RawPeer::upgrade(server.addr, "authorization=Bearer%20secret&x-camp-sid=23")
        .await
        .unwrap();
    peer.sid = 23;
    let _info = peer.recv().await;
    let started = std::time::Instant::now();
    let stopping = tokio::spawn(server.shutdown());
    let bye = peer.recv_data().await;
    assert!(matches!(bye.body, Body::Bye { ref reason, .. } if reason == "server shutting down"));
    assert_eq!(peer.closed().await.0, 4000);
    stopping.await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}
