//! A session fed arbitrary frame sequences on a real socket (proptest on
//! stable: `cargo fuzz` needs nightly). Each case connects to a server that
//! echoes messages and streams (as the binary does), optionally completes
//! the handshake, sends a generated sequence: frames of every type with
//! small ids, so that transaction frames come out of order (chunks before
//! their start, fetches for unknown streams, finishes before chunks,
//! cancels, reused ids), frames with another sid, malformed bytes and text
//! WebSocket messages. Then it asks for a PONG: the session must either
//! answer it or have closed with a CAMP close code, never hang or vanish
//! without a close frame. After all cases every session is gone from the
//! registry and `camp_sessions_open` is 0. Shrunk failing sequences are
//! kept in `tests/regressions/` and replayed first.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::Bytes;
use camp_server::protocol::{self, Behaviour, Body, Frame, PingPong};
use camp_server::server::Server;
use futures_util::{SinkExt, StreamExt};
use proptest::prelude::*;
use proptest::test_runner::{FileFailurePersistence, TestCaseError, TestRunner};
use tokio_tungstenite::tungstenite::Message as Ws;

use crate::common::{TOKEN, TestServer};

/// What the client does next.
#[derive(Debug, Clone)]
enum Op {
    /// A frame with the connection's sid.
    Frame(Body),
    /// A frame with another sid.
    Foreign(Body),
    /// Arbitrary bytes as a binary WebSocket message.
    Bytes(Vec<u8>),
    /// A text WebSocket message.
    Text(String),
}

fn small_text() -> impl Strategy<Value = String> {
    "[ -~]{0,24}"
}

fn small_data() -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..48).prop_map(Bytes::from)
}

/// Bodies with small ids, sizes and offsets, so that transactions collide.
fn body() -> impl Strategy<Value = Body> {
    let tx = 0u32..6;
    let ack = 0u32..8;
    let behaviour = prop_oneof![Just(Behaviour::Push), Just(Behaviour::Pull)];
    prop_oneof![
        1 => (ack.clone(), 0u32..3, 0u64..4).prop_map(|(ack, version, features)| Body::EndpointInfo {
            ack,
            version,
            features,
        }),
        1 => (ack.clone(), small_text()).prop_map(|(ack, reason)| Body::Bye { ack, reason }),
        1 => (0u32..16).prop_map(|acked| Body::Ack { acked }),
        1 => (ack.clone(), small_text()).prop_map(|(ack, message)| Body::Error { ack, message }),
        1 => prop_oneof![Just(PingPong::Ping), Just(PingPong::Pong)].prop_map(Body::Ping),
        1 => (ack.clone(), small_text()).prop_map(|(ack, text)| Body::Utf8 { ack, text }),
        1 => (ack.clone(), small_data()).prop_map(|(ack, data)| Body::Binary { ack, data }),
        3 => (ack.clone(), tx.clone(), -1i64..64, behaviour, "[a-c]{0,2}").prop_map(
            |(ack, tx_id, size, behaviour, name)| Body::TxStart {
                ack,
                tx_id,
                size: if behaviour == Behaviour::Pull { size.max(0) } else { size },
                behaviour,
                name,
            }
        ),
        3 => (tx.clone(), 0u64..64, small_data()).prop_map(|(tx_id, offset, data)| Body::TxChunk {
            tx_id,
            offset,
            data,
        }),
        2 => (ack.clone(), tx.clone()).prop_map(|(ack, tx_id)| Body::TxFinish { ack, tx_id }),
        2 => (ack.clone(), tx.clone(), 0u64..80, 0u64..80).prop_map(|(ack, tx_id, start, end)| {
            Body::TxFetch {
                ack,
                tx_id,
                start,
                end,
            }
        }),
        2 => (ack, tx).prop_map(|(ack, tx_id)| Body::TxCancel { ack, tx_id }),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => body().prop_map(Op::Frame),
        1 => body().prop_map(Op::Foreign),
        1 => proptest::collection::vec(any::<u8>(), 0..40).prop_map(Op::Bytes),
        1 => small_text().prop_map(Op::Text),
    ]
}

/// One runtime and one server for every case.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    })
}

/// The binary's echo (messages and streams), with a short handshake
/// timeout so that cases that never finish it end soon.
async fn server() -> TestServer {
    TestServer::binary_echo(Server::builder().handshake_timeout(Duration::from_secs(2))).await
}

/// How a case ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// The session answered the final PING.
    Answered,
    /// The session closed with a CAMP close code (or after our BYE).
    Closed,
}

/// Runs one case against the server at `addr` as session `sid`.
async fn run_case(
    addr: std::net::SocketAddr,
    sid: u64,
    handshake: bool,
    ops: &[Op],
) -> Result<Outcome, TestCaseError> {
    let url = format!("ws://{addr}/?authorization=Bearer%20{TOKEN}&x-camp-sid={sid}");
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .map_err(|e| TestCaseError::fail(format!("upgrade: {e}")))?;
    let frame = |sid: u64, body: Body| Ws::Binary(Frame::new(sid, body).encode());
    if handshake {
        let _ = ws.send(frame(sid, Body::Ack { acked: 0 })).await;
        let _ = ws
            .send(frame(
                sid,
                Body::EndpointInfo {
                    ack: 0,
                    version: 1,
                    features: protocol::FEATURE_TRANSACTIONS,
                },
            ))
            .await;
    }
    let mut said_bye = false;
    for op in ops {
        let msg = match op {
            Op::Frame(body) => {
                said_bye |= matches!(body, Body::Bye { .. });
                frame(sid, body.clone())
            }
            Op::Foreign(body) => frame(sid ^ 0x5a5a, body.clone()),
            Op::Bytes(b) => Ws::Binary(Bytes::from(b.clone())),
            Op::Text(t) => Ws::Text(t.clone().into()),
        };
        if ws.send(msg).await.is_err() {
            break; // closed by the server meanwhile; judged below
        }
    }
    let _ = ws.send(frame(sid, Body::Ping(PingPong::Ping))).await;
    // Either a PONG, or a close frame with a CAMP code; within 10 s.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let next = tokio::time::timeout(left, ws.next())
            .await
            .map_err(|_| TestCaseError::fail("no PONG and no close within 10 s"))?;
        match next {
            Some(Ok(Ws::Binary(b))) => {
                if let Ok(Frame {
                    body: Body::Ping(PingPong::Pong),
                    ..
                }) = Frame::decode(b)
                {
                    let _ = ws.close(None).await;
                    return Ok(Outcome::Answered);
                }
            }
            Some(Ok(Ws::Close(Some(close)))) => {
                let code = u16::from(close.code);
                prop_assert!(
                    [4000, 4001, 4002].contains(&code),
                    "closed with {} ({})",
                    code,
                    close.reason
                );
                return Ok(Outcome::Closed);
            }
            Some(Ok(Ws::Close(None))) => {
                return Err(TestCaseError::fail("close frame without a code"));
            }
            Some(Ok(_)) => {}
            Some(Err(e)) if said_bye => {
                // After our BYE the server closes; a reset is fine then.
                let _ = e;
                return Ok(Outcome::Closed);
            }
            Some(Err(e)) => return Err(TestCaseError::fail(format!("connection error: {e}"))),
            None if said_bye => return Ok(Outcome::Closed),
            None => {
                return Err(TestCaseError::fail(
                    "connection ended without a close frame",
                ));
            }
        }
    }
}

#[test]
fn sessions_fed_arbitrary_frame_sequences_answer_or_close_cleanly() {
    let rt = runtime();
    let server = rt.block_on(server());
    let addr = server.addr;
    let config = ProptestConfig {
        // CAMP_FUZZ_CASES=N for a longer hunt.
        cases: std::env::var("CAMP_FUZZ_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(96),
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/regressions/fuzz_session.txt"
        )))),
        ..ProptestConfig::default()
    };
    let mut runner = TestRunner::new(config);
    let sid = std::sync::atomic::AtomicU64::new(1);
    let strategy = (any::<bool>(), proptest::collection::vec(op(), 0..40));
    let outcomes = std::sync::Mutex::new(Vec::new());
    let result = runner.run(&strategy, |(handshake, ops)| {
        let sid = sid.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let outcome = rt.block_on(run_case(addr, sid, handshake, &ops))?;
        outcomes.lock().unwrap().push(outcome);
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    // The generator reaches both ends: sessions that survive their input
    // and sessions that are closed for it.
    let outcomes = outcomes.into_inner().unwrap();
    let answered = outcomes.iter().filter(|o| **o == Outcome::Answered).count();
    assert!(
        answered > 0 && answered < outcomes.len(),
        "{answered} of {} answered",
        outcomes.len()
    );
    // Nothing left behind: every session closes and leaves the registry.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let open = server
            .server
            .metrics()
            .sessions_open
            .load(std::sync::atomic::Ordering::Relaxed);
        if open == 0 && server.server.sessions().is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{open} sessions still open: {:?}",
            server
                .server
                .sessions()
                .iter()
                .map(|s| s.id())
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    rt.block_on(server.shutdown());
}
