//! Bearer tokens never reach a log, at any level, when the library is
//! embedded: every log line of an authenticated connect, a peer dial and a
//! refused token is captured at TRACE (`tracing` events and, through
//! `tracing-log`, the `log` records of tungstenite and tokio-tungstenite)
//! and searched for the token.

use std::time::Duration;

use camp_server::client::Client;
use camp_server::extension::Message;
use camp_server::server::Server;

use crate::common::TestServer;
use crate::plugin_support::LogCapture;

/// Unreserved characters only: the percent-encoded form in the upgrade
/// URL is the token itself.
const GOOD: &str = "tok-7Qx2c9Lk4Zr8";
const BAD: &str = "tok-wrong-5Hs1Vb3Nm6";
/// Marker in a URL given to tungstenite's own client handshake (the
/// positive control: the capture does see what that handshake traces).
const MARKER: &str = "leak-marker-0Pq8Wd";

// One thread: the thread-local subscriber sees every task of the test.
#[tokio::test(flavor = "current_thread")]
async fn no_token_in_any_log_at_trace() {
    // `log` records (tungstenite) become tracing events; fails harmlessly
    // if another test installed it first.
    let _ = tracing_log::LogTracer::init();
    let capture = LogCapture::default();
    let _guard = tracing::subscriber::set_default(capture.subscriber());

    let (server, mut incoming) = Server::builder().tokens([GOOD]).build();
    tokio::spawn(async move {
        while let Some((session, mut events)) = incoming.next().await {
            tokio::spawn(async move {
                while let Some(Message::Utf8(t)) = events.next_message().await {
                    drop(session.send_utf8(t));
                }
            });
        }
    });
    let server = TestServer::start(server).await;

    // An authenticated session with traffic both ways.
    let (session, mut events) = Client::new(server.url(), GOOD).connect().await.unwrap();
    session.send_utf8("hello").acked().await.unwrap();
    assert_eq!(
        events.next_message().await,
        Some(Message::Utf8("hello".into()))
    );
    session.close("done");
    let _ = events.closed().await;

    // A peer dial from another server (the path the binary's filter used
    // to hide).
    let (dialer, _incoming) = Server::builder().tokens(["unused"]).build();
    let (peer, mut peer_events) = dialer.connect_peer(server.url(), GOOD).await.unwrap();
    peer.send_utf8("via peer").acked().await.unwrap();
    peer.close("done");
    let _ = peer_events.closed().await;

    // A rejected token.
    let refused = Client::new(server.url(), BAD).connect().await.unwrap_err();
    assert!(refused.to_string().contains("401"), "{refused}");

    // Positive control: tungstenite's own client handshake traces its
    // request, URL included, and the capture sees it.
    let url = format!(
        "ws://{}/?authorization=Bearer%20{MARKER}&x-camp-sid=9",
        server.addr
    );
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_tungstenite::connect_async(url),
    )
    .await;
    server.shutdown().await;

    let log = capture.text();
    assert!(
        log.contains(MARKER),
        "the capture must see tungstenite's TRACE output:\n{log}"
    );
    assert!(log.contains("TRACE"), "{log}");
    for token in [GOOD, BAD] {
        assert!(!log.contains(token), "token {token} logged:\n{log}");
    }
}
