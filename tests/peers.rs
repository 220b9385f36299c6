//! Server-to-server: one server dials another with `connect_peer` and both
//! ends get the usual session API, messages and streams both ways.

use std::time::Duration;

use crate::common::TestServer;
use camp_server::extension::Message;
use camp_server::server::Server;
use camp_server::session::{SessionEvent, StreamOptions};
use camp_server::tls::{ClientTls, TlsConfig};
use tokio::io::AsyncReadExt;

#[tokio::test]
async fn two_servers_talk_through_connect_peer() {
    let (b, mut b_sessions) =
        TestServer::with_sessions(Server::builder().tokens(["b-token"])).await;
    let (mut a, _a_sessions) =
        TestServer::with_sessions(Server::builder().tokens(["a-token"])).await;

    let (to_b, mut from_b) = a
        .server
        .connect_peer(b.url(), "b-token")
        .await
        .expect("A dials B");
    let (at_b, mut b_events) = b_sessions.recv().await.unwrap();
    assert_eq!(at_b.id(), to_b.id(), "B sees the session id A chose");

    // Messages both ways.
    to_b.send_utf8("hello B").acked().await.unwrap();
    assert_eq!(
        b_events.next_message().await,
        Some(Message::Utf8("hello B".into()))
    );
    at_b.send_binary(vec![1, 2, 3]).acked().await.unwrap();
    assert_eq!(
        from_b.next_message().await,
        Some(Message::Binary(vec![1, 2, 3].into()))
    );

    // Streams both ways: A pushes to B, B serves a PULL to A.
    let transfer = to_b.stream(&b"from A"[..], StreamOptions::push("a2b"));
    let Some(SessionEvent::Stream(mut s)) = b_events.next().await else {
        panic!("stream")
    };
    let mut got = Vec::new();
    s.read_to_end(&mut got).await.unwrap();
    assert_eq!((s.name(), got.as_slice()), ("a2b", &b"from A"[..]));
    assert_eq!(transfer.await.unwrap(), 6);

    let waiting = to_b.wait_for_stream("b2a", Duration::from_secs(5));
    let transfer = at_b.stream(&b"pulled from B"[..], StreamOptions::pull("b2a"));
    let mut s = waiting.await.unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"pulled from B");
    assert_eq!(transfer.await.unwrap(), 13);

    // A wrong token is refused by B.
    let err = a.server.connect_peer(b.url(), "nope").await.unwrap_err();
    assert!(err.to_string().contains("401"), "{err}");

    // A's shutdown closes its peer sessions gracefully.
    a.stop();
    let info = b_events.closed().await.unwrap();
    assert_eq!(info.code, 4000, "{info:?}");
    assert!(to_b.is_closed() || from_b.closed().await.is_some());
}

#[tokio::test]
async fn a_peer_over_wss() {
    let c = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert, key) = (c.cert.pem(), c.signing_key.serialize_pem());
    let tls = TlsConfig::from_pem(cert.as_bytes(), key.as_bytes()).unwrap();
    let (b, mut b_sessions) =
        TestServer::with_sessions(Server::builder().tokens(["t"]).tls(tls)).await;
    let roots = ClientTls::with_root_pem(cert.as_bytes()).unwrap();
    let (a, _) = TestServer::with_sessions(Server::builder().tokens(["t"]).peer_tls(roots)).await;
    let (to_b, _events) = a
        .server
        .connect_peer(b.wss_url(), "t")
        .await
        .expect("A dials B over TLS");
    let (_at_b, mut b_events) = b_sessions.recv().await.unwrap();
    to_b.send_utf8("secure").acked().await.unwrap();
    assert_eq!(
        b_events.next_message().await,
        Some(Message::Utf8("secure".into()))
    );
}

/// A session dialled with `connect_peer` is one of the server's own: it
/// counts in its `/metrics`, is listed in `/admin` and `sessions()`, and
/// shutdown says BYE to it and waits for it (`serve` returns only after
/// the peer session ended).
#[tokio::test]
async fn a_peer_session_is_counted_listed_and_drained_by_shutdown() {
    let (b, mut b_sessions) = TestServer::with_sessions(Server::builder().tokens(["t"])).await;
    let (a, _a_sessions) = TestServer::with_sessions(Server::builder().tokens(["t"])).await;
    let (to_b, _from_b) = a.server.connect_peer(b.url(), "t").await.unwrap();
    let (_at_b, mut b_events) = b_sessions.recv().await.unwrap();
    to_b.send_utf8("counted").acked().await.unwrap();

    let text = camp_server::admin::render_metrics(&a.server, None);
    assert!(text.contains("\ncamp_sessions_open 1\n"), "{text}");
    assert!(text.contains("\ncamp_sessions_total 1\n"), "{text}");
    assert!(
        text.contains("camp_frames_out_total{type=\"UTF8DATA\"} 1\n"),
        "{text}"
    );
    assert_eq!(a.server.session(to_b.id()), Some(to_b.clone()));
    let view = camp_server::admin::admin_view(&a.server, None);
    let listed: Vec<u64> = view["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(listed, vec![to_b.id()], "{view:#}");

    // Shutdown: the peer gets BYE (4000) and `serve` returns only once the
    // session ended, which it then no longer lists.
    let server = a.server.clone();
    a.shutdown().await;
    assert!(
        to_b.is_closed(),
        "serve returned before the peer session ended"
    );
    assert!(server.sessions().is_empty());
    let info = b_events.closed().await.unwrap();
    assert_eq!((info.code, info.by_peer), (4000, true), "{info:?}");
    assert_eq!(
        server
            .metrics()
            .sessions_open
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}
