//! Transaction limits on real sockets, against a server that echoes every
//! stream back (as the binary does): the spool-file attack (a client
//! announces small PULL streams, serves our fetches, finishes them and
//! never fetches the echoes, each holding a spooled temporary file), the
//! cap on outgoing streams per session, and idle transactions both ways.
//! Each limit is answered with an ERROR frame naming its config key and
//! counted in `camp_limits_hit_total`. The echo relays (`Session::relay`), as
//! the binary does, so a peer pushing streams it never reads back is held
//! to the receive budget.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use camp_server::protocol::{Behaviour, Body, Frame, PingPong};
use camp_server::server::Server;
use camp_server::session::transaction::TxLimits;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message as Ws;

use crate::common::{RawPeer, TestServer};

/// The binary's echo (streams relayed back: PUSH stays PUSH, PULL stays
/// PULL) with these limits.
async fn stream_echo(limits: TxLimits, keep_alive: Duration) -> TestServer {
    TestServer::binary_echo(
        Server::builder()
            .keep_alive(keep_alive)
            .transaction_limits(limits),
    )
    .await
}

/// A raw CAMP peer ([`RawPeer`]) that answers heartbeats while it waits.
struct Peer {
    raw: RawPeer,
}

impl Peer {
    async fn connect(addr: SocketAddr, sid: u64) -> Peer {
        Peer {
            raw: RawPeer::connect(addr, sid).await,
        }
    }

    async fn send(&mut self, body: Body) {
        self.raw.send(body).await;
    }

    /// The next frame other than ACK and heartbeat (PINGs are answered),
    /// within 10 s.
    async fn next(&mut self) -> Body {
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(10), self.raw.ws.next())
                .await
                .expect("a frame within 10 s")
                .expect("connection open")
                .unwrap();
            let Ws::Binary(b) = msg else {
                assert!(!matches!(msg, Ws::Close(_)), "closed: {msg:?}");
                continue;
            };
            match Frame::decode(b).unwrap().body {
                Body::Ack { .. } | Body::Ping(PingPong::Pong) => {}
                Body::Ping(PingPong::Ping) => self.send(Body::Ping(PingPong::Pong)).await,
                body => return body,
            }
        }
    }

    /// Sends a 10-byte PULL stream `tx_id`, serves the server's fetches and
    /// finishes it; returns the first frame after that which is neither a
    /// fetch, an ACK nor a TX_CANCEL of this stream (the echo's TX_START,
    /// or an ERROR).
    async fn pull_stream(&mut self, tx_id: u32, name: &str) -> Body {
        let data = Bytes::from_static(b"0123456789");
        self.send(Body::TxStart {
            ack: 1000 + tx_id,
            tx_id,
            size: data.len() as i64,
            behaviour: Behaviour::Pull,
            name: name.into(),
        })
        .await;
        let mut served = 0;
        loop {
            match self.next().await {
                Body::TxFetch {
                    tx_id: id,
                    start,
                    end,
                    ..
                } if id == tx_id => {
                    let (s, e) = (start as usize, (end as usize).min(data.len()));
                    self.send(Body::TxChunk {
                        tx_id,
                        offset: start,
                        data: data.slice(s..e),
                    })
                    .await;
                    served += e - s;
                    if served == data.len() {
                        self.send(Body::TxFinish {
                            ack: 2000 + tx_id,
                            tx_id,
                        })
                        .await;
                    }
                }
                // Refused before it was read: the server drops our stream.
                Body::TxCancel { tx_id: id, .. } if id == tx_id => {}
                other => return other,
            }
        }
    }
}

/// Polls `cond` (30 s at most).
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn spooled_echoes_never_fetched_stop_at_the_spool_file_limit() {
    let limits = TxLimits::new(100, 1024, Duration::from_secs(60), 3, 1 << 30);
    let server = stream_echo(limits.clone(), Duration::from_secs(15)).await;
    let mut peer = Peer::connect(server.addr, 1).await;
    let mut echoes = Vec::new();
    for i in 0..6u32 {
        let name = format!("s{i}");
        match peer.pull_stream(2 * i + 1, &name).await {
            Body::TxStart {
                tx_id,
                behaviour: Behaviour::Pull,
                name: echoed,
                ..
            } if i < 3 => {
                assert_eq!(echoed, name);
                echoes.push(tx_id);
            }
            Body::Error { message, .. } if i >= 3 => {
                assert!(message.contains(&format!("{name:?} not sent")), "{message}");
                assert!(message.contains("limits.max_spool_files"), "{message}");
            }
            other => panic!("stream {i}: unexpected {other:?}"),
        }
        assert!(limits.spool.files() <= 3, "{} files", limits.spool.files());
    }
    assert_eq!(limits.spool.files(), 3);
    let metrics = server.server.metrics();
    assert_eq!(metrics.limit_hits("max_spool_files"), 3);
    assert!(
        camp_server::admin::render_metrics(&server.server, None)
            .contains("camp_limits_hit_total{limit=\"max_spool_files\"} 3")
    );
    // Cancelling an echo closes its file: the next stream is echoed.
    peer.send(Body::TxCancel {
        ack: 3000,
        tx_id: echoes[0],
    })
    .await;
    eventually("the spool file to close", || limits.spool.files() == 2).await;
    let echo = peer.pull_stream(101, "again").await;
    assert!(matches!(echo, Body::TxStart { .. }), "{echo:?}");
    assert_eq!(limits.spool.files(), 3);
}

#[tokio::test]
async fn spooled_bytes_are_capped_server_wide() {
    // 25 bytes: two 10-byte echoes fit, the third does not.
    let limits = TxLimits::new(100, 1024, Duration::from_secs(60), 100, 25);
    let server = stream_echo(limits.clone(), Duration::from_secs(15)).await;
    let mut a = Peer::connect(server.addr, 1).await;
    let mut b = Peer::connect(server.addr, 2).await;
    assert!(matches!(a.pull_stream(1, "a1").await, Body::TxStart { .. }));
    assert!(matches!(b.pull_stream(1, "b1").await, Body::TxStart { .. }));
    match a.pull_stream(3, "a2").await {
        Body::Error { message, .. } => {
            assert!(message.contains("limits.max_spooled_bytes"), "{message}")
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(limits.spool.bytes(), 20);
    assert_eq!(server.server.metrics().limit_hits("max_spooled_bytes"), 1);
}

#[tokio::test]
async fn outgoing_streams_per_session_are_capped() {
    let limits = TxLimits::new(2, 1024, Duration::from_secs(60), 100, 1 << 30);
    let server = stream_echo(limits, Duration::from_secs(15)).await;
    let mut peer = Peer::connect(server.addr, 1).await;
    assert!(matches!(
        peer.pull_stream(1, "x1").await,
        Body::TxStart { .. }
    ));
    assert!(matches!(
        peer.pull_stream(3, "x2").await,
        Body::TxStart { .. }
    ));
    match peer.pull_stream(5, "x3").await {
        Body::Error { message, .. } => {
            assert!(message.contains("\"x3\" not sent"), "{message}");
            assert!(
                message.contains("limits.max_outgoing_transactions"),
                "{message}"
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    // Another session has its own allowance.
    let mut other = Peer::connect(server.addr, 2).await;
    assert!(matches!(
        other.pull_stream(1, "y1").await,
        Body::TxStart { .. }
    ));
    assert_eq!(
        server
            .server
            .metrics()
            .limit_hits("max_outgoing_transactions"),
        1
    );
}

#[tokio::test]
async fn idle_transactions_are_cancelled_both_ways() {
    let limits = TxLimits::new(100, 1024, Duration::from_millis(300), 100, 1 << 30);
    let server = stream_echo(limits.clone(), Duration::from_millis(100)).await;
    let mut peer = Peer::connect(server.addr, 1).await;

    // Outgoing: the echo of a PULL stream that is never fetched.
    let Body::TxStart { tx_id: echo, .. } = peer.pull_stream(1, "never-fetched").await else {
        panic!("expected the echo's TX_START")
    };
    assert_eq!(limits.spool.files(), 1);
    let mut error = None;
    loop {
        match peer.next().await {
            Body::Error { message, .. } => error = Some(message),
            Body::TxCancel { tx_id, .. } if tx_id == echo => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    let error = error.expect("an ERROR before the TX_CANCEL");
    assert!(error.contains(&format!("transaction {echo}")), "{error}");
    assert!(
        error.contains("limits.transaction_idle_timeout_ms"),
        "{error}"
    );
    eventually("the spool file to close", || limits.spool.files() == 0).await;

    // Incoming: a PUSH stream that never sends a chunk (its echo, a PUSH
    // stream reading it, fails with it).
    peer.send(Body::TxStart {
        ack: 50,
        tx_id: 11,
        size: -1,
        behaviour: Behaviour::Push,
        name: "silent".into(),
    })
    .await;
    let (mut idle_error, mut cancelled) = (false, false);
    while !(idle_error && cancelled) {
        match peer.next().await {
            Body::Error { message, .. } => {
                if message.contains("transaction 11")
                    && message.contains("limits.transaction_idle_timeout_ms")
                {
                    idle_error = true;
                }
            }
            Body::TxCancel { tx_id: 11, .. } => cancelled = true,
            Body::TxStart { .. } | Body::TxCancel { .. } | Body::TxFinish { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        server
            .server
            .metrics()
            .limit_hits("transaction_idle_timeout_ms")
            >= 2
    );
}

#[tokio::test]
async fn incoming_streams_per_session_are_capped() {
    let limits = TxLimits::new(100, 2, Duration::from_secs(60), 100, 1 << 30);
    let server = stream_echo(limits, Duration::from_secs(15)).await;
    let mut peer = Peer::connect(server.addr, 1).await;
    for tx_id in [1u32, 3, 5] {
        peer.send(Body::TxStart {
            ack: 10 + tx_id,
            tx_id,
            size: -1,
            behaviour: Behaviour::Push,
            name: format!("open{tx_id}"),
        })
        .await;
    }
    // The first two are echoed (their echoes start); the third is refused.
    let (mut refused, mut cancelled) = (false, false);
    while !(refused && cancelled) {
        match peer.next().await {
            Body::Error { message, .. } => {
                assert!(message.contains("transaction 5"), "{message}");
                assert!(
                    message.contains("limits.max_incoming_transactions"),
                    "{message}"
                );
                refused = true;
            }
            Body::TxCancel { tx_id, .. } => {
                assert_eq!(tx_id, 5);
                cancelled = true;
            }
            Body::TxStart { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        server
            .server
            .metrics()
            .limit_hits("max_incoming_transactions"),
        1
    );
}

/// The attack that found the hole: 64 PUSH streams sent 1 MiB at a time
/// while the peer never reads their echoes. Each echo used to read a chunk
/// and wait for room in the queue holding it, outside every budget: the
/// server took 64 MiB and more per session (measured 96 MiB of RSS). A
/// relay keeps each chunk counted in the receive budget until it is
/// queued, so the server stops reading once `RX_BUFFER_LIMIT` (8 MiB) and
/// the outgoing queue (8 MiB) are full; what else the peer gets written
/// sits in the kernel's socket buffers (both ways, a few MiB on loopback).
#[tokio::test]
async fn a_relay_holds_back_a_peer_that_pushes_without_reading() {
    const MIB: usize = 1 << 20;
    let server = stream_echo(TxLimits::default(), Duration::from_secs(60)).await;
    let accepted = push_without_reading(&server, 64, 160).await;
    // Measured: 24 MiB taken with the relay, 88 MiB with `Session::stream`.
    assert!(
        accepted <= 40 * MIB,
        "the server took {} MiB from a peer that never reads",
        accepted / MIB
    );
    // The pause is counted under the key that sets the budget.
    let metrics = server.server.metrics();
    assert!(metrics.limit_hits("max_receive_buffer_bytes") >= 1);
}

/// `limits.max_receive_buffer_bytes` sets the receive budget: at 1 MiB the
/// same attack is held back sooner.
#[tokio::test]
async fn the_receive_budget_is_configurable() {
    let limits = TxLimits {
        max_receive_buffer: 1 << 20,
        ..TxLimits::default()
    };
    let server = stream_echo(limits, Duration::from_secs(60)).await;
    let accepted = push_without_reading(&server, 64, 160).await;
    assert!(
        accepted <= 33 * (1 << 20),
        "the server took {} MiB",
        accepted >> 20
    );
}

/// Opens `streams` PUSH streams and sends them 1 MiB chunks round-robin,
/// never reading, until a write stalls for 2 s (or `max_mib` were sent);
/// returns the bytes the server (and the kernel's buffers) took.
async fn push_without_reading(server: &TestServer, streams: u32, max_mib: u64) -> usize {
    let mut peer = Peer::connect(server.addr, 1).await;
    push_on(&mut peer, streams, max_mib).await
}

/// The attack of [`push_without_reading`] on an open session, which stays
/// open.
async fn push_on(peer: &mut Peer, streams: u32, max_mib: u64) -> usize {
    const MIB: usize = 1 << 20;
    for i in 0..streams {
        peer.send(Body::TxStart {
            ack: 0,
            tx_id: 2 * i + 1,
            size: -1,
            behaviour: Behaviour::Push,
            name: format!("s{i}"),
        })
        .await;
    }
    let chunk = Bytes::from(vec![b'Z'; MIB]);
    let mut accepted = 0usize;
    'sending: for round in 0..=(max_mib / u64::from(streams)) {
        for i in 0..streams {
            let frame = Frame::new(
                1,
                Body::TxChunk {
                    tx_id: 2 * i + 1,
                    offset: round * MIB as u64,
                    data: chunk.clone(),
                },
            )
            .encode();
            let sent =
                tokio::time::timeout(Duration::from_secs(2), peer.raw.ws.send(Ws::Binary(frame)));
            if sent.await.is_err() {
                break 'sending;
            }
            accepted += MIB;
        }
    }
    accepted
}

/// After sessions that held megabytes of buffers end, the binary gives the
/// freed memory back to the system (`memory::release_freed_heap_soon`):
/// without it glibc kept most of it resident (87 % of a 1 GB peak in the
/// attacker trial).
#[tokio::test]
async fn memory_held_by_attacking_sessions_is_returned_after_they_end() {
    let spawned = crate::common::spawn_server(&[]).await;
    let pid = spawned.child.id().unwrap();
    let addr = spawned.addr();
    let before = crate::common::rss_kib(pid);
    let mut peers = Vec::new();
    for sid in 100..104 {
        peers.push(Peer::connect(addr, sid).await);
    }
    futures_util::future::join_all(peers.iter_mut().map(|p| push_on(p, 64, 64))).await;
    let peak = crate::common::rss_kib(pid);
    drop(peers);
    // The sessions end, then the trim a second later.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut after = crate::common::rss_kib(pid);
    while after > before + 16 * 1024 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        after = crate::common::rss_kib(pid);
    }
    assert!(
        peak > before + 48 * 1024,
        "the attack held only {} KiB",
        peak - before
    );
    assert!(
        after <= before + 16 * 1024,
        "RSS {} MiB before, {} at the peak, {} after the sessions ended",
        before / 1024,
        peak / 1024,
        after / 1024
    );
}
