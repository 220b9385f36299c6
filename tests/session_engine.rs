//! The one-loop session engine under the conditions a review of it named:
//! an application that drops or stops reading its events, and a peer that
//! closes the WebSocket while frames are still queued for it.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::common::{RawPeer, TOKEN, TestServer, small_caps};
use camp_server::client::Client;
use camp_server::protocol::Body;
use camp_server::server::Server;
use camp_server::session::SessionEvent;
use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message as Ws;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

async fn until_no_sessions(server: &Server, within: Duration) {
    let deadline = Instant::now() + within;
    while !server.sessions().is_empty() {
        assert!(Instant::now() < deadline, "a session outlived its close");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The application let `max_queued_bytes` of messages pile up (reading
/// paused), then dropped its events: what it left is discarded and the
/// session reads again, so the peer's BYE ends it.
#[tokio::test]
async fn an_application_that_drops_its_events_does_not_freeze_the_session() {
    let (server, mut sessions) =
        TestServer::with_sessions(Server::builder().tokens([TOKEN]).backpressure(small_caps()))
            .await;
    let (client, mut client_events) = Client::new(server.url(), TOKEN)
        .sid(71)
        .connect()
        .await
        .unwrap();
    let (session, events) = sessions.recv().await.unwrap();
    // 128 KiB the application never takes: the session stops reading at
    // 64 KiB (the rest waits in the socket).
    for _ in 0..8 {
        client.post(camp_server::extension::Message::Binary(
            vec![1u8; 16 * 1024].into(),
        ));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop((session, events));
    client.close("bye");
    let info = tokio::time::timeout(Duration::from_secs(10), client_events.closed())
        .await
        .expect("the session answers BYE")
        .unwrap();
    assert_eq!(info.code, 4000, "{info:?}");
    until_no_sessions(&server.server, Duration::from_secs(5)).await;
    server.shutdown().await;
}

/// An application that holds its events without reading them keeps the
/// session from reading (backpressure), but a close still ends it: the
/// last slot of the event channel is kept for `Closed`, and the session's
/// id is free at once.
#[tokio::test]
async fn a_session_closes_while_its_application_does_not_read() {
    let (server, mut sessions) = TestServer::with_sessions(Server::builder().tokens([TOKEN])).await;
    let (client, _client_events) = Client::new(server.url(), TOKEN)
        .sid(72)
        .connect()
        .await
        .unwrap();
    let (session, mut events) = sessions.recv().await.unwrap();
    for i in 0..300 {
        drop(client.send_utf8(format!("m{i}")));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    session.close("done");
    until_no_sessions(&server.server, Duration::from_secs(5)).await;
    // The id is free again.
    let (again, _) = Client::new(server.url(), TOKEN)
        .sid(72)
        .connect()
        .await
        .unwrap();
    // What was delivered is still there, and the last event says why the
    // session ended.
    let mut messages = 0;
    let last = loop {
        let next = tokio::time::timeout(Duration::from_secs(10), events.next());
        match next.await.expect("events end with Closed") {
            Some(SessionEvent::Message(_)) => messages += 1,
            Some(SessionEvent::Closed(info)) => break info,
            Some(_) => {}
            None => panic!("no Closed event"),
        }
    };
    assert_eq!((last.code, last.by_peer), (4000, false), "{last:?}");
    assert!(messages > 200, "{messages} messages delivered");
    again.close("bye");
    server.shutdown().await;
}

/// A peer closes the WebSocket while echoes are still queued for it: the
/// frames that can no longer be sent are discarded and the close is still
/// answered with the peer's code.
#[tokio::test]
async fn a_close_with_frames_still_queued_is_answered() {
    let server = TestServer::echo(Server::builder().backpressure(small_caps())).await;
    let mut peer = RawPeer::connect(server.addr, 73).await;
    let chunk = bytes::Bytes::from(vec![3u8; 16 * 1024]);
    for i in 0..64 {
        let frame = camp_server::protocol::Frame::new(
            73,
            Body::Binary {
                ack: i,
                data: chunk.clone(),
            },
        );
        if peer.ws.send(Ws::Binary(frame.encode())).await.is_err() {
            break;
        }
    }
    peer.ws
        .send(Ws::Close(Some(CloseFrame {
            code: CloseCode::Away,
            reason: "leaving".into(),
        })))
        .await
        .unwrap();
    let (code, _) = peer.closed().await;
    assert_eq!(code, u16::from(CloseCode::Away));
    until_no_sessions(&server.server, Duration::from_secs(5)).await;
    server.shutdown().await;
}

/// A burst of messages read together is answered with one write: the
/// ACKs of its messages and the application's echoes leave in the same
/// flush. (They left in two, ACKs first: the session flushed when the
/// socket had nothing more to read, before its application had answered,
/// and after every 32 turns, which a burst of 16 messages and 16 ACKs is.)
/// On this current-thread runtime the application always runs before the
/// session's next poll; on a multi-thread one another worker may poll the
/// session first, so there it is best effort (its effect at 50 sessions is
/// in BENCHMARKS.md).
#[tokio::test]
async fn the_acks_of_a_burst_and_the_answers_leave_in_one_write() {
    const ROUNDS: u32 = 10;
    const BURST: u32 = 16;
    let server = TestServer::binary_echo(Server::builder()).await;
    let mut peer = RawPeer::connect(server.addr, 74).await;
    let mut ack = 1;
    for _ in 0..ROUNDS {
        // The burst in one WebSocket flush, so the server reads it at once.
        for _ in 0..BURST {
            let frame = camp_server::protocol::Frame::new(
                peer.sid,
                Body::Binary {
                    ack,
                    data: vec![7u8; 64].into(),
                },
            );
            peer.ws
                .feed(Ws::Binary(frame.encode().to_vec().into()))
                .await
                .unwrap();
            ack += 1;
        }
        peer.ws.flush().await.unwrap();
        let (mut acks, mut echoes) = (0, 0);
        while acks < BURST || echoes < BURST {
            match peer.recv().await.body {
                Body::Ack { .. } => acks += 1,
                Body::Binary { ack, .. } => {
                    echoes += 1;
                    peer.send(Body::Ack { acked: ack }).await;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    peer.send(Body::Bye {
        ack,
        reason: String::new(),
    })
    .await;
    let _ = peer.closed().await;
    until_no_sessions(&server.server, Duration::from_secs(5)).await;
    // The session's counts are added to the metrics when it ends.
    let flushes = server
        .server
        .metrics()
        .socket_flushes
        .load(Ordering::Relaxed);
    // One write per burst, and at most two each for the handshake and the
    // close; splitting the ACKs from the echoes makes it 2 × ROUNDS + ….
    assert!(
        flushes <= u64::from(ROUNDS) + 4,
        "{flushes} flushes for {ROUNDS} bursts"
    );
    assert!(flushes >= u64::from(ROUNDS), "{flushes} flushes counted");
    server.shutdown().await;
}

/// A frame the peer never acknowledges times out 2.5 s after it was sent,
/// also when the expiry timer was set for an older frame that was
/// acknowledged meanwhile (the timer is kept, fires early, finds nothing
/// due and is set again for the frame still pending).
#[tokio::test]
async fn a_frame_never_acknowledged_times_out_after_an_acknowledged_one() {
    let (server, mut sessions) = TestServer::with_sessions(Server::builder().tokens([TOKEN])).await;
    let mut peer = RawPeer::connect(server.addr, 75).await;
    let (session, _events) = sessions.recv().await.unwrap();
    let first = session.send_utf8("first");
    let Body::Utf8 { ack, .. } = peer.recv_data().await.body else {
        panic!("expected the first message")
    };
    peer.send(Body::Ack { acked: ack }).await;
    assert!(first.acked().await.is_ok());
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let sent = Instant::now();
    let second = session.send_utf8("second");
    assert!(matches!(peer.recv_data().await.body, Body::Utf8 { .. }));
    // Not acknowledged: it times out one ACK timeout after it was sent,
    // not at the first frame's deadline and not never.
    let result = tokio::time::timeout(Duration::from_secs(6), second.acked())
        .await
        .expect("the second frame timed out");
    let waited = sent.elapsed();
    assert_eq!(result, Err(camp_server::session::DeliveryError::Timeout));
    assert!(
        waited >= Duration::from_millis(2400) && waited < Duration::from_millis(4000),
        "timed out after {waited:?}"
    );
    assert_eq!(
        server.server.metrics().ack_timeouts.load(Ordering::Relaxed),
        1
    );
    server.shutdown().await;
}
