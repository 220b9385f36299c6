//! Backpressure on real sockets: a client that stops reading, the queue cap,
//! each drop policy, other sessions, transaction frames, and bounded memory
//! for a 1 GiB stream.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::common::{TOKEN, TestServer, small_caps};
use camp_server::client::Client;
use camp_server::extension::Message;
use camp_server::server::Server;
use camp_server::session::{
    Backpressure, Delivery, DeliveryError, DropPolicy, Session, SessionEvent, SessionEvents,
    StreamOptions,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeek, ReadBuf};
use tokio::sync::mpsc;

const MIB: usize = 1024 * 1024;
const MARKER: &str = "marker";

/// Small caps so a stalled client fills the queue quickly.
fn limits(drop_policy: DropPolicy) -> Backpressure {
    Backpressure {
        high_water_mark: 256 * 1024,
        low_water_mark: 64 * 1024,
        max_queued_bytes: MIB,
        max_queue_count: 1024,
        drop_policy,
    }
}

/// A server with `backpressure`; its sessions come out of the channel.
async fn serve(
    backpressure: Backpressure,
) -> (
    TestServer,
    mpsc::UnboundedReceiver<(Session, SessionEvents)>,
) {
    TestServer::with_sessions(Server::builder().tokens([TOKEN]).backpressure(backpressure)).await
}

async fn connect(addr: SocketAddr) -> (Session, SessionEvents) {
    Client::new(format!("ws://{addr}/"), TOKEN)
        .connect()
        .await
        .unwrap()
}

/// A binary message carrying its sequence number.
fn numbered(seq: u32) -> Vec<u8> {
    let mut v = vec![0xab; 32 * 1024];
    v[..4].copy_from_slice(&seq.to_be_bytes());
    v
}

/// Sends numbered binaries to a client that does not read until the
/// queue has dropped something; returns every delivery by sequence number.
async fn flood(session: &Session) -> Vec<Delivery> {
    let mut sent = Vec::new();
    for seq in 0..20_000u32 {
        sent.push(session.send_binary(numbered(seq)));
        if seq % 16 == 15 {
            tokio::time::sleep(Duration::from_millis(2)).await;
            if session.queue_stats().drops > 0 {
                return sent;
            }
        }
    }
    panic!("the queue never filled");
}

/// What the client got, read after it resumed, up to the `end` message.
#[derive(Debug, Default)]
struct Received {
    /// Binary sequence numbers in arrival order.
    binaries: Vec<u32>,
    /// UTF-8 messages in arrival order (without `end`).
    texts: Vec<String>,
}

/// Resumes reading on the client; the server says `end` once its queue
/// drained.
async fn resume(server_side: &Session, mut events: SessionEvents) -> Received {
    let reader = tokio::spawn(async move {
        let mut got = Received::default();
        while let Some(m) = events.next_message().await {
            match m {
                Message::Binary(b) => got
                    .binaries
                    .push(u32::from_be_bytes([b[0], b[1], b[2], b[3]])),
                Message::Utf8(t) if t == "end" => return got,
                Message::Utf8(t) => got.texts.push(t),
                Message::Error(e) => panic!("error {e}"),
            }
        }
        panic!("session ended before `end`")
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while server_side.queue_stats().bytes > 0 {
        assert!(Instant::now() < deadline, "the queue never drained");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server_side.send_utf8("end");
    tokio::time::timeout(Duration::from_secs(20), reader)
        .await
        .unwrap()
        .unwrap()
}

/// Whether the queue dropped this message (as opposed to sending it).
async fn dropped(d: Delivery) -> bool {
    matches!(d.acked().await, Err(DeliveryError::DroppedByQueue))
}

/// Runs the common part of a policy test: flood, a UTF-8 marker and one
/// more binary into the full queue, resume. Checks the cap and that every
/// message is either received or reported dropped, in order.
async fn policy_run(policy: DropPolicy) -> (Received, bool, bool, u64) {
    let (server, mut sessions) = serve(limits(policy)).await;
    let addr = server.addr;
    let (_client, events) = connect(addr).await;
    let (session, _server_events) = sessions.recv().await.unwrap();
    let mut sent = flood(&session).await;
    // As large as a binary, so it does not fit the full queue either.
    let marker = session.send_utf8(MARKER.repeat(1 + 32 * 1024 / MARKER.len()));
    let last_seq = sent.len() as u32;
    sent.push(session.send_binary(numbered(last_seq)));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let stats = session.queue_stats();
    assert!(
        stats.peak_bytes <= MIB,
        "queued bytes peaked at {} over the 1 MiB cap",
        stats.peak_bytes
    );
    let got = resume(&session, events).await;
    assert!(got.binaries.windows(2).all(|w| w[0] < w[1]), "in order");
    let mut drops = u64::from(got.texts.is_empty());
    let mut next = got.binaries.iter().peekable();
    for (seq, d) in sent.into_iter().enumerate() {
        if next.peek() == Some(&&(seq as u32)) {
            next.next();
            assert!(!dropped(d).await, "{seq} arrived but was reported dropped");
        } else {
            assert!(
                dropped(d).await,
                "{seq} neither arrived nor was reported dropped"
            );
            drops += 1;
        }
    }
    let marker_arrived = got.texts.len() == 1 && got.texts[0].starts_with(MARKER);
    assert_eq!(dropped(marker).await, !marker_arrived);
    assert_eq!(session.queue_stats().drops, drops, "every drop is counted");
    let last_arrived = got.binaries.last() == Some(&last_seq);
    (got, marker_arrived, last_arrived, drops)
}

#[tokio::test]
async fn drop_oldest_keeps_the_newest_messages() {
    let (got, marker, last, drops) = policy_run(DropPolicy::DropOldest).await;
    assert!(drops > 0);
    assert!(marker, "a new message always gets in");
    assert!(last, "the newest binary arrives");
    // What went missing is older than what arrived last.
    let first_gap = (0..).find(|s| !got.binaries.contains(s)).unwrap();
    assert!(first_gap < *got.binaries.last().unwrap());
}

#[tokio::test]
async fn drop_newest_keeps_what_is_queued() {
    let (_got, marker, last, drops) = policy_run(DropPolicy::DropNewest).await;
    assert!(drops > 0);
    assert!(!marker, "a message sent into the full queue is dropped");
    assert!(!last, "so is the binary after it");
}

#[tokio::test]
async fn dedupe_latest_replaces_queued_messages_of_the_same_kind() {
    let (_got, marker, last, drops) = policy_run(DropPolicy::DedupeLatest).await;
    assert!(drops > 0);
    assert!(
        !marker,
        "no UTF-8 message was queued for the new one to replace, so it goes"
    );
    assert!(last, "a new binary replaces the oldest queued binary");
}

#[tokio::test]
async fn drops_are_reported_in_the_statistics_and_other_sessions_are_unaffected() {
    let (server, mut incoming) = Server::builder()
        .tokens([TOKEN])
        .backpressure(limits(DropPolicy::DropOldest))
        .keep_alive(Duration::from_secs(2))
        .build();
    let server = TestServer::start(server).await;
    let addr = server.addr;
    let (_stalled, stalled_events) = connect(addr).await;
    let (flooded, mut flooded_events) = incoming.next().await.unwrap();
    let (other, mut other_events) = connect(addr).await;
    let (other_server, mut other_server_events) = incoming.next().await.unwrap();
    tokio::spawn(async move {
        while let Some(m) = other_server_events.next_message().await {
            if let Message::Utf8(t) = m {
                drop(other_server.send_utf8(t));
            }
        }
    });

    let flooding = tokio::spawn({
        let flooded = flooded.clone();
        async move { flood(&flooded).await.len() }
    });
    // Meanwhile another session round-trips promptly.
    for i in 0..20 {
        let started = Instant::now();
        other.send_utf8(format!("ping {i}")).acked().await.unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(1), other_events.next_message())
            .await
            .expect("the other session is not held up");
        assert_eq!(reply, Some(Message::Utf8(format!("ping {i}"))));
        assert!(started.elapsed() < Duration::from_secs(1));
    }
    flooding.await.unwrap();
    let drops = flooded.queue_stats().drops;
    assert!(drops > 0);
    let stats = loop {
        match tokio::time::timeout(Duration::from_secs(5), flooded_events.next())
            .await
            .unwrap()
        {
            Some(SessionEvent::Stats(s)) if s.queue_drops > 0 => break s,
            Some(_) => {}
            None => panic!("session ended"),
        }
    };
    assert!(stats.queue_drops >= drops);
    assert!(flooded.queue_stats().peak_bytes <= MIB);
    drop(stalled_events);
}

/// The pattern byte at `pos`.
fn pattern(pos: u64) -> u8 {
    (pos % 251) as u8
}

/// A virtual seekable source of `len` pattern bytes (no disk, no memory).
struct Virtual {
    pos: u64,
    len: u64,
}

impl AsyncRead for Virtual {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        static TABLE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        let table = TABLE.get_or_init(|| (0..251 * 1024).map(pattern).collect());
        let n = (self.len.saturating_sub(self.pos))
            .min(buf.remaining() as u64)
            .min(250 * 1024) as usize;
        let from = (self.pos % 251) as usize;
        buf.put_slice(&table[from..from + n]);
        self.pos += n as u64;
        Poll::Ready(Ok(()))
    }
}

impl AsyncSeek for Virtual {
    fn start_seek(mut self: Pin<&mut Self>, position: io::SeekFrom) -> io::Result<()> {
        self.pos = match position {
            io::SeekFrom::Start(p) => p,
            io::SeekFrom::End(d) => self.len.saturating_add_signed(d),
            io::SeekFrom::Current(d) => self.pos.saturating_add_signed(d),
        };
        Ok(())
    }

    fn poll_complete(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        Poll::Ready(Ok(self.pos))
    }
}

/// Reads a stream to its end, checking the pattern; returns its length.
async fn check(mut reader: impl AsyncRead + Unpin) -> u64 {
    let mut buf = vec![0; 256 * 1024];
    let mut pos = 0u64;
    loop {
        let n = reader.read(&mut buf).await.unwrap();
        if n == 0 {
            return pos;
        }
        // Spot-check the first and last byte of every read (a full check of
        // 1 GiB is slow in debug builds; offsets are checked by the session).
        assert_eq!(buf[0], pattern(pos));
        assert_eq!(buf[n - 1], pattern(pos + n as u64 - 1));
        pos += n as u64;
    }
}

/// Peak resident set of this process (VmHWM), in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

async fn timed<F: Future<Output = u64>>(what: &str, f: F) -> u64 {
    let started = Instant::now();
    let n = f.await;
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "{what}: {n} bytes in {secs:.2} s = {:.0} MB/s",
        n as f64 / secs / 1e6
    );
    n
}

#[tokio::test]
async fn streaming_1_gib_each_way_keeps_peak_rss_under_200_mib() {
    const GIB: u64 = 1024 * 1024 * 1024;
    let (server, mut sessions) = serve(Backpressure::default()).await;
    let addr = server.addr;
    let (client, mut client_events) = connect(addr).await;
    let (server_side, mut server_events) = sessions.recv().await.unwrap();

    // PUSH of unknown size, client to server.
    let transfer = client.stream(
        Virtual { pos: 0, len: GIB },
        StreamOptions::push("big-push"),
    );
    let Some(SessionEvent::Stream(s)) = server_events.next().await else {
        panic!()
    };
    assert_eq!(timed("PUSH 1 GiB", check(s)).await, GIB);
    assert_eq!(transfer.await.unwrap(), GIB);

    // PULL from a seekable source, server to client: the reader fetches
    // windows as it consumes.
    let transfer = server_side.stream_seekable(
        Virtual { pos: 0, len: GIB },
        StreamOptions::pull("big-pull"),
    );
    let Some(SessionEvent::Stream(s)) = client_events.next().await else {
        panic!()
    };
    assert_eq!(timed("PULL 1 GiB", check(s)).await, GIB);
    assert_eq!(transfer.await.unwrap(), GIB);

    let peak = peak_rss();
    eprintln!("peak RSS (VmHWM): {} MiB", peak / MIB as u64);
    assert!(
        peak < 200 * MIB as u64,
        "peak RSS {} MiB",
        peak / MIB as u64
    );
}

#[tokio::test]
async fn transaction_frames_wait_instead_of_being_dropped() {
    let (server, mut sessions) = serve(limits(DropPolicy::DropNewest)).await;
    let addr = server.addr;
    let (_client, mut events) = connect(addr).await;
    let (session, _server_events) = sessions.recv().await.unwrap();
    let flooded = flood(&session).await.len();
    // The queue is full of data frames; a 3 MiB stream must still arrive
    // whole, its sender waiting for room.
    let size = 3 * MIB as u64;
    let transfer = session.stream(
        Virtual { pos: 0, len: size },
        StreamOptions::push("through"),
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let drops_before = session.queue_stats().drops;
    let mut binaries = 0;
    let stream = loop {
        match events.next().await.unwrap() {
            SessionEvent::Stream(s) => break s,
            SessionEvent::Message(Message::Binary(_)) => binaries += 1,
            _ => {}
        }
    };
    assert_eq!(check(stream).await, size);
    assert_eq!(transfer.await.unwrap(), size);
    assert_eq!(
        session.queue_stats().drops,
        drops_before,
        "no chunk was dropped"
    );
    assert!(binaries > 0 && binaries < flooded);
    assert!(session.queue_stats().peak_bytes <= MIB);
}

/// Sends `body` from a peer that never reads, until its writes block (the
/// server stopped reading) or `count` frames went out; returns how many.
async fn flood_without_reading(
    peer: &mut crate::common::RawPeer,
    count: u32,
    body: impl Fn(u32) -> camp_server::protocol::Body,
) -> u32 {
    use futures_util::SinkExt;
    let mut sent = 0;
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        for i in 0..count {
            let frame = camp_server::protocol::Frame::new(peer.sid, body(i));
            // The server may close a peer that does not read while it is
            // still sending (the heartbeat gives such a peer no grace):
            // the flood ends there.
            let message = tokio_tungstenite::tungstenite::Message::Binary(frame.encode());
            if peer.ws.send(message).await.is_err() {
                break;
            }
            sent += 1;
        }
    })
    .await;
    sent
}

#[tokio::test]
async fn a_peer_that_never_reads_cannot_grow_the_queue_with_replies() {
    use camp_server::protocol::{Body, PingPong};
    let caps = Backpressure {
        high_water_mark: 64 * 1024,
        low_water_mark: 16 * 1024,
        max_queued_bytes: 64 * 1024,
        max_queue_count: 64,
        drop_policy: DropPolicy::DropOldest,
    };
    let server = TestServer::echo(Server::builder().backpressure(caps)).await;
    // PINGs (each answered with a PONG) and data (each answered with an
    // ACK and an echo) from peers that never read.
    for (sid, data) in [(1u64, false), (2, true)] {
        let mut peer = crate::common::RawPeer::connect(server.addr, sid).await;
        let sent = flood_without_reading(&mut peer, 300_000, |i| {
            if data {
                Body::Utf8 {
                    ack: i,
                    text: "x".repeat(32),
                }
            } else {
                Body::Ping(PingPong::Ping)
            }
        })
        .await;
        let stats = server
            .server
            .session(sid)
            .expect("still open")
            .queue_stats();
        // The session stopped reading once its queue was full: replies
        // stay within the caps (plus the replies to the one frame that
        // filled it), however much the peer sent.
        assert!(
            stats.frames <= caps.max_queue_count + 2,
            "{sent} frames sent: {stats:?}"
        );
        assert!(
            stats.peak_bytes <= caps.max_queued_bytes + 1024,
            "{sent} frames sent: {stats:?}"
        );
        assert!(sent > 1_000, "the peer was never let through: {sent}");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn an_application_that_does_not_take_its_messages_holds_reading_at_the_cap() {
    use camp_server::protocol::Body;
    let caps = Backpressure {
        max_queued_bytes: MIB,
        ..limits(DropPolicy::DropOldest)
    };
    let (server, mut sessions) =
        TestServer::with_sessions(Server::builder().tokens([TOKEN]).backpressure(caps)).await;
    let mut peer = crate::common::RawPeer::connect(server.addr, 9).await;
    // The application holds its events and never takes a message.
    let (_session, _events) = sessions.recv().await.unwrap();
    let chunk = bytes::Bytes::from(vec![7u8; 256 * 1024]);
    // 200 × 256 KiB = 50 MiB: far more than the cap plus the sockets'
    // buffers, and less than the 256 events the channel holds by count.
    let sent = flood_without_reading(&mut peer, 200, |i| Body::Binary {
        ack: i,
        data: chunk.clone(),
    })
    .await;
    assert!(
        sent < 200,
        "the session kept reading: all {sent} messages taken"
    );
    server.shutdown().await;
}

/// Small queue caps for the flood tests.
#[tokio::test]
async fn pings_before_the_handshake_from_a_peer_that_never_reads_stop_the_reading() {
    use camp_server::protocol::{Body, PingPong};
    let server = TestServer::echo(Server::builder().backpressure(small_caps())).await;
    // Upgraded, no CAMP handshake, never reading, only PINGs.
    let mut peer = crate::common::RawPeer::upgrade(
        server.addr,
        &format!("authorization=Bearer%20{TOKEN}&x-camp-sid=8"),
    )
    .await
    .unwrap();
    peer.sid = 8;
    let sent = flood_without_reading(&mut peer, 1_000_000, |_| Body::Ping(PingPong::Ping)).await;
    assert!(
        sent < 1_000_000,
        "the server kept reading: {sent} PINGs taken"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_peer_that_does_not_read_and_falls_silent_is_closed_by_the_heartbeat() {
    use camp_server::protocol::Body;
    let server = TestServer::echo(
        Server::builder()
            .backpressure(small_caps())
            .keep_alive(Duration::from_millis(300)),
    )
    .await;
    let mut peer = crate::common::RawPeer::connect(server.addr, 6).await;
    let chunk = bytes::Bytes::from(vec![1u8; 16 * 1024]);
    flood_without_reading(&mut peer, 100_000, |i| Body::Binary {
        ack: i,
        data: chunk.clone(),
    })
    .await;
    // Silent now, and still not reading: closed within a few intervals.
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.server.session(6).is_some() {
        assert!(
            Instant::now() < deadline,
            "the silent peer kept its session"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.shutdown().await;
}
