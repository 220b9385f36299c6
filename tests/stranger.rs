//! A client written only from the reference frame layouts, as a stranger
//! would write one (no code from this crate's protocol module), against the
//! real `camp-server` binary.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::process::{Child, Command};

use tokio_tungstenite::tungstenite::Message as Ws;

/// Starts the binary on an ephemeral port; returns it and its address.
async fn start_binary() -> (Child, String) {
    let args = [
        "--bind",
        "127.0.0.1:0",
        "--admin-bind",
        "127.0.0.1:0",
        "--token",
        "s3cret",
        "--log",
        "warn",
    ];
    let spawned = crate::common::spawn_announcing(env!("CARGO_BIN_EXE_camp-server"), &args).await;
    let addr = spawned
        .url
        .strip_prefix("ws://")
        .and_then(|s| s.strip_suffix('/'))
        .unwrap_or_else(|| panic!("unexpected URL {:?}", spawned.url))
        .to_string();
    (spawned.child, addr)
}

const SID: u64 = 0x0123_4567_89ab_cdef;

fn frame(ty: u8, rest: &[u8]) -> Vec<u8> {
    let mut f = SID.to_be_bytes().to_vec();
    f.push(ty);
    f.extend_from_slice(rest);
    f
}

fn ack_of(id: u32) -> Vec<u8> {
    frame(0xfd, &id.to_be_bytes())
}

fn tracked(ty: u8, ack: u32, payload: &[u8]) -> Vec<u8> {
    let mut rest = ack.to_be_bytes().to_vec();
    rest.extend_from_slice(payload);
    frame(ty, &rest)
}

struct Stranger {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

impl Stranger {
    async fn send(&mut self, bytes: Vec<u8>) {
        self.ws.send(Ws::Binary(bytes.into())).await.unwrap();
    }

    async fn recv(&mut self) -> Vec<u8> {
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(5), self.ws.next())
                .await
                .expect("server answers within 5 s")
                .expect("connection open")
                .unwrap();
            match msg {
                Ws::Binary(b) => return b.to_vec(),
                Ws::Ping(_) | Ws::Pong(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}

#[tokio::test]
async fn a_stranger_client_talks_to_the_binary() {
    let (mut child, addr) = start_binary().await;
    let url = format!("ws://{addr}/?authorization=Bearer%20s3cret&x-camp-sid={SID}");
    let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let mut c = Stranger { ws };

    // Handshake: the server speaks first with ENDPOINT_INFO (25 bytes).
    let info = c.recv().await;
    assert_eq!(info.len(), 25);
    assert_eq!(&info[..8], &SID.to_be_bytes());
    assert_eq!(info[8], 0xff);
    assert_eq!(u32_at(&info, 13), 1, "version 1");
    c.send(ack_of(u32_at(&info, 9))).await;
    let mut mine = 1u32.to_be_bytes().to_vec(); // version
    mine.extend_from_slice(&0u64.to_be_bytes()); // no features
    c.send(tracked(0xff, 0, &mine)).await;
    assert_eq!(
        c.recv().await,
        ack_of(0),
        "our ENDPOINT_INFO is acknowledged"
    );

    // Echo of text and binary, each acknowledged first.
    c.send(tracked(0xfa, 1, "grüße".as_bytes())).await;
    assert_eq!(c.recv().await, ack_of(1));
    let echo = c.recv().await;
    assert_eq!((echo[8], &echo[13..]), (0xfa, "grüße".as_bytes()));
    c.send(ack_of(u32_at(&echo, 9))).await;
    c.send(tracked(0xf9, 2, &[0, 255, 7])).await;
    assert_eq!(c.recv().await, ack_of(2));
    let echo = c.recv().await;
    assert_eq!((echo[8], &echo[13..]), (0xf9, &[0u8, 255, 7][..]));
    c.send(ack_of(u32_at(&echo, 9))).await;

    // Ping gets pong.
    c.send(frame(0xfb, b"ping")).await;
    assert_eq!(c.recv().await, frame(0xfb, b"pong"));

    // Malformed input gets an ERROR frame, then things go on.
    c.send(vec![1, 2, 3]).await;
    let err = c.recv().await;
    assert_eq!(err[8], 0xfc);
    assert!(String::from_utf8_lossy(&err[13..]).contains("truncated"));
    c.send(ack_of(u32_at(&err, 9))).await;
    c.send(frame(0x77, &[0; 8])).await;
    let err = c.recv().await;
    assert_eq!(err[8], 0xfc);
    assert!(String::from_utf8_lossy(&err[13..]).contains("unknown frame type 0x77"));
    let mut huge = tracked(0xf9, 3, &[]);
    huge.resize(13 + 1024 * 1024 + 1, 0);
    c.send(huge).await;
    let err = c.recv().await;
    assert!(String::from_utf8_lossy(&err[13..]).contains("exceeds the limit"));

    // BYE: acknowledged, then the close with 4000 and our reason.
    c.send(tracked(0xfe, 4, b"stranger leaving")).await;
    assert_eq!(c.recv().await, ack_of(4));
    let close = tokio::time::timeout(Duration::from_secs(5), c.ws.next())
        .await
        .unwrap();
    match close {
        Some(Ok(Ws::Close(Some(f)))) => {
            assert_eq!(
                (u16::from(f.code), f.reason.as_str()),
                (4000, "stranger leaving")
            )
        }
        other => panic!("expected close, got {other:?}"),
    }

    // Bad input never took the process down: a new session works.
    let url = format!("ws://{addr}/?authorization=Bearer%20s3cret&x-camp-sid=abc");
    assert!(
        tokio_tungstenite::connect_async(url).await.is_err(),
        "non-numeric sid refused"
    );
    let url = format!("ws://{addr}/?authorization=Bearer%20s3cret&x-camp-sid=1");
    let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let mut again = Stranger { ws };
    assert_eq!(again.recv().await[8], 0xff);
    child.kill().await.unwrap();
}

#[tokio::test]
async fn binary_exits_zero_after_sigterm_and_says_bye() {
    let (mut child, addr) = start_binary().await;
    let url = format!("ws://{addr}/?authorization=Bearer%20s3cret&x-camp-sid={SID}");
    let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let mut c = Stranger { ws };
    let info = c.recv().await;
    c.send(ack_of(u32_at(&info, 9))).await;
    let mut payload = 1u32.to_be_bytes().to_vec();
    payload.extend_from_slice(&0u64.to_be_bytes());
    c.send(tracked(0xff, 0, &payload)).await;
    assert_eq!(c.recv().await, ack_of(0));

    let pid = child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let bye = c.recv().await;
    assert_eq!(bye[8], 0xfe);
    assert_eq!(&bye[13..], b"server shutting down");
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
}

#[tokio::test]
async fn binary_refuses_to_start_without_a_token() {
    let out = Command::new(env!("CARGO_BIN_EXE_camp-server"))
        .args(["--bind", "127.0.0.1:0", "--no-admin"])
        .env_remove("CAMP_TOKENS")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no token configured"));
}
