//! Server-to-server: one server dials another with `connect_peer` and both
//! ends get the usual session API, messages and streams both ways.

use std::time::Duration;

use camp_server::extension::Message;
use camp_server::server::tls::{ClientTls, TlsConfig};
use camp_server::server::{Server, ServerBuilder};
use camp_server::session::{Session, SessionEvent, SessionEvents, StreamOptions};
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, oneshot};

/// Serves `builder` on 127.0.0.1:0; new sessions go to the returned channel.
async fn start(
    builder: ServerBuilder,
) -> (
    Server,
    u16,
    mpsc::UnboundedReceiver<(Session, SessionEvents)>,
    oneshot::Sender<()>,
) {
    let (server, mut incoming) = builder.build();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(s) = incoming.next().await {
            let _ = tx.send(s);
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (stop, stopped) = oneshot::channel::<()>();
    let s = server.clone();
    tokio::spawn(async move {
        s.serve(listener, async {
            let _ = stopped.await;
        })
        .await
    });
    (server, port, rx, stop)
}

#[tokio::test]
async fn two_servers_talk_through_connect_peer() {
    let (_b, b_port, mut b_sessions, _stop_b) = start(Server::builder().tokens(["b-token"])).await;
    let (a, _a_port, _a_sessions, stop_a) = start(Server::builder().tokens(["a-token"])).await;

    let (to_b, mut from_b) = a
        .connect_peer(format!("ws://127.0.0.1:{b_port}/"), "b-token")
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
        Some(Message::Binary(vec![1, 2, 3]))
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
    let err = a
        .connect_peer(format!("ws://127.0.0.1:{b_port}/"), "nope")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("401"), "{err}");

    // A's shutdown closes its peer sessions gracefully.
    stop_a.send(()).unwrap();
    let info = b_events.closed().await.unwrap();
    assert_eq!(info.code, 4000, "{info:?}");
    assert!(to_b.is_closed() || from_b.closed().await.is_some());
}

#[tokio::test]
async fn a_peer_over_wss() {
    let c = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert, key) = (c.cert.pem(), c.signing_key.serialize_pem());
    let tls = TlsConfig::from_pem(cert.as_bytes(), key.as_bytes()).unwrap();
    let (_b, b_port, mut b_sessions, _stop_b) =
        start(Server::builder().tokens(["t"]).tls(tls)).await;
    let roots = ClientTls::with_root_pem(cert.as_bytes()).unwrap();
    let (a, _, _, _stop_a) = start(Server::builder().tokens(["t"]).peer_tls(roots)).await;
    let (to_b, _events) = a
        .connect_peer(format!("wss://localhost:{b_port}/"), "t")
        .await
        .expect("A dials B over TLS");
    let (_at_b, mut b_events) = b_sessions.recv().await.unwrap();
    to_b.send_utf8("secure").acked().await.unwrap();
    assert_eq!(
        b_events.next_message().await,
        Some(Message::Utf8("secure".into()))
    );
}
