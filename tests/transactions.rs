//! CAMP.Transaction on real sockets: PUSH and PULL round trips through an
//! echo server in both directions, ranges, cancels, protocol errors, and
//! the frames on the wire.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use crate::common::{TOKEN, TestServer};
use bytes::Bytes;
use camp_server::client::Client;
use camp_server::protocol::{self, Behaviour, Body, Frame, PingPong};
use camp_server::server::Server;
use camp_server::session::{
    IncomingStream, Session, SessionEvent, SessionEvents, StreamOptions, TransferError,
};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as Ws;

const MIB: u64 = 1024 * 1024;
const SIZES: [u64; 4] = [0, 1, MIB, 64 * MIB + 3];

/// A pseudo-random table whose length is prime, so a byte shifted by any
/// offset error compares unequal.
fn table() -> &'static [u8] {
    static TABLE: OnceLock<Vec<u8>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut x: u32 = 0x9e37_79b9;
        (0..65_521)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect()
    })
}

/// The byte at `pos` of every test stream.
fn expected(pos: u64, into: &mut [u8]) {
    let t = table();
    let mut i = (pos % t.len() as u64) as usize;
    for b in into.iter_mut() {
        *b = t[i];
        i += 1;
        if i == t.len() {
            i = 0;
        }
    }
}

/// A non-seekable source of `len` pattern bytes, handed out in reads of
/// at most 200 000 bytes (so chunks and reads do not line up).
struct Pattern {
    pos: u64,
    len: u64,
}

impl Pattern {
    fn new(len: u64) -> Pattern {
        Pattern { pos: 0, len }
    }
}

impl AsyncRead for Pattern {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = (self.len - self.pos)
            .min(buf.remaining() as u64)
            .min(200_000) as usize;
        let mut tmp = vec![0; n];
        expected(self.pos, &mut tmp);
        buf.put_slice(&tmp);
        self.pos += n as u64;
        Poll::Ready(Ok(()))
    }
}

/// Reads `reader` to the end, checking every byte against the pattern from
/// `start`; returns how many bytes it read.
async fn verify(mut reader: impl AsyncRead + Unpin, start: u64) -> io::Result<u64> {
    let mut buf = vec![0; 256 * 1024];
    let mut want = vec![0; 256 * 1024];
    let mut pos = start;
    loop {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            return Ok(pos - start);
        }
        expected(pos, &mut want[..n]);
        assert!(
            buf[..n] == want[..n],
            "wrong bytes at {pos}..{}",
            pos + n as u64
        );
        pos += n as u64;
    }
}

type App =
    Arc<dyn Fn(Session, SessionEvents) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// A server on 127.0.0.1:0 whose sessions run `app`.
async fn serve(app: App) -> (SocketAddr, TestServer) {
    let (server, mut incoming) = Server::builder().tokens([TOKEN]).build();
    tokio::spawn(async move {
        while let Some((session, events)) = incoming.next().await {
            tokio::spawn(app(session, events));
        }
    });
    let server = TestServer::start(server).await;
    (server.addr, server)
}

/// The echo application of the binary: streams go back as they came
/// (relayed: `Session::stream` with a reader is what the clients use).
async fn echo_server() -> (SocketAddr, TestServer) {
    serve(Arc::new(|session, mut events| {
        Box::pin(async move {
            while let Some(event) = events.next().await {
                if let SessionEvent::Stream(stream) = event {
                    let options = stream.options();
                    let transfer = session.relay(stream, options);
                    tokio::spawn(async move {
                        let _ = transfer.await;
                    });
                }
            }
        })
    }))
    .await
}

async fn client(addr: SocketAddr) -> (Session, SessionEvents) {
    Client::new(format!("ws://{addr}/"), TOKEN)
        .connect()
        .await
        .unwrap()
}

/// Sends a stream of `size` pattern bytes to the echo server and checks
/// what comes back: same name, behaviour and size, and every byte.
async fn round_trip(session: &Session, options: StreamOptions, size: u64) {
    let name = options.name.clone();
    let back = session.wait_for_stream(name.clone(), Duration::from_secs(30));
    let transfer = session.stream(Pattern::new(size), options.clone());
    let stream = back
        .await
        .unwrap_or_else(|e| panic!("echoed stream {name}: {e}"));
    assert_eq!(stream.name(), name);
    assert_eq!(stream.behaviour(), options.behaviour);
    let expected_size = match options.behaviour {
        Behaviour::Pull => Some(size),
        Behaviour::Push => options.size,
    };
    assert_eq!(stream.size(), expected_size);
    let read = tokio::spawn(verify(stream, 0));
    assert_eq!(transfer.await.expect("transfer"), size);
    assert_eq!(read.await.unwrap().expect("read back"), size);
}

#[tokio::test]
async fn push_with_known_size_round_trips_byte_for_byte() {
    let (addr, _server) = echo_server().await;
    let (session, _events) = client(addr).await;
    for size in SIZES {
        round_trip(
            &session,
            StreamOptions::push(format!("known-{size}")).size(size),
            size,
        )
        .await;
    }
}

#[tokio::test]
async fn push_with_unknown_size_round_trips_byte_for_byte() {
    let (addr, _server) = echo_server().await;
    let (session, _events) = client(addr).await;
    for size in SIZES {
        round_trip(
            &session,
            StreamOptions::push(format!("unknown-{size}")),
            size,
        )
        .await;
    }
}

#[tokio::test]
async fn pull_round_trips_byte_for_byte() {
    // Both ends spool their non-seekable source to a temporary file and
    // serve the receiver's fetch windows from it.
    let (addr, _server) = echo_server().await;
    let (session, _events) = client(addr).await;
    for size in SIZES {
        round_trip(&session, StreamOptions::pull(format!("pull-{size}")), size).await;
    }
}

#[tokio::test]
async fn pull_from_a_file_serves_ranges_and_checks_the_size() {
    let (addr, _server) = echo_server().await;
    let (session, _events) = client(addr).await;
    let size = 5 * MIB + 7;
    let mut data = vec![0; size as usize];
    expected(0, &mut data);
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &data).unwrap();

    let back = session.wait_for_stream("file", Duration::from_secs(10));
    let source = tokio::fs::File::open(file.path()).await.unwrap();
    let transfer = session.stream_seekable(source, StreamOptions::pull("file"));
    let stream = back.await.unwrap();
    assert_eq!(stream.size(), Some(size));
    assert_eq!(verify(stream, 0).await.unwrap(), size);
    assert_eq!(transfer.await.unwrap(), size);

    let source = tokio::fs::File::open(file.path()).await.unwrap();
    let wrong = session.stream_seekable(source, StreamOptions::pull("file").size(size + 1));
    assert!(matches!(
        wrong.await,
        Err(TransferError::SizeMismatch { announced, actual }) if announced == size + 1 && actual == size
    ));
}

#[tokio::test]
async fn pull_ranges_out_of_order_and_overlapping_get_exactly_their_bytes() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (addr, _server) = serve(Arc::new(move |_session, mut events| {
        let tx = tx.clone();
        Box::pin(async move {
            while let Some(event) = events.next().await {
                if let SessionEvent::Stream(s) = event {
                    let _ = tx.send(s);
                }
            }
        })
    }))
    .await;
    let (session, _events) = client(addr).await;
    let size = 3 * MIB + 11;
    let transfer = session.stream(Pattern::new(size), StreamOptions::pull("ranges"));
    let stream: IncomingStream = rx.recv().await.unwrap();
    assert_eq!(stream.size(), Some(size));
    let ranges = [
        (2 * MIB, 2 * MIB + 100),
        (10, 20),
        (0, 15),
        (MIB - 5, 2 * MIB + 50),
        (size - 1, size + 1000),
        (5, 6),
    ];
    // Ask for all of them at once, then read each.
    let readers: Vec<_> = ranges
        .iter()
        .map(|&(s, e)| (s, e.min(size), stream.request_range(s, e).unwrap()))
        .collect();
    for (start, end, reader) in readers {
        assert_eq!(
            verify(reader, start).await.unwrap(),
            end - start,
            "range {start}..{end}"
        );
    }
    assert!(stream.request_range(size, size + 1).is_err());
    assert!(stream.request_range(5, 5).is_err());
    // One more range covering everything completes the transaction.
    let all = stream.request_range(0, size).unwrap();
    assert_eq!(verify(all, 0).await.unwrap(), size);
    assert_eq!(transfer.await.unwrap(), size);
}

/// A source that never ends.
struct Endless(u64);

impl AsyncRead for Endless {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = buf.remaining().min(64 * 1024);
        let mut tmp = vec![0; n];
        expected(self.0, &mut tmp);
        buf.put_slice(&tmp);
        self.0 += n as u64;
        Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn receiver_cancel_stops_the_sender() {
    let (addr, _server) = serve(Arc::new(|_session, mut events| {
        Box::pin(async move {
            while let Some(event) = events.next().await {
                if let SessionEvent::Stream(mut s) = event {
                    let mut buf = vec![0; 3 * MIB as usize];
                    s.read_exact(&mut buf).await.unwrap();
                    s.cancel();
                }
            }
        })
    }))
    .await;
    let (session, _events) = client(addr).await;
    let transfer = session.stream(Endless(0), StreamOptions::push("endless"));
    let outcome = tokio::time::timeout(Duration::from_secs(10), transfer)
        .await
        .expect("the sender stops");
    assert!(
        matches!(outcome, Err(TransferError::CancelledByPeer)),
        "{outcome:?}"
    );
    // The session is still usable.
    session.send_utf8("still here").acked().await.unwrap();
}

#[tokio::test]
async fn sender_cancel_fails_the_reader() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (addr, _server) = serve(Arc::new(move |_session, mut events| {
        let tx = tx.clone();
        Box::pin(async move {
            while let Some(event) = events.next().await {
                if let SessionEvent::Stream(mut s) = event {
                    let mut total = 0u64;
                    let mut buf = vec![0; 64 * 1024];
                    let outcome = loop {
                        match s.read(&mut buf).await {
                            Ok(0) => break Ok(total),
                            Ok(n) => total += n as u64,
                            Err(e) => break Err(e),
                        }
                    };
                    let _ = tx.send(outcome);
                }
            }
        })
    }))
    .await;
    let (session, _events) = client(addr).await;
    let transfer = session.stream(Endless(0), StreamOptions::push("endless"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    transfer.cancel();
    let outcome = transfer.await;
    assert!(
        matches!(outcome, Err(TransferError::Cancelled)),
        "{outcome:?}"
    );
    let read = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    let err = read.expect_err("the reader fails");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted, "{err}");
}

#[tokio::test]
async fn pull_reader_drop_cancels_and_wait_for_stream_times_out() {
    let (addr, _server) = serve(Arc::new(|_session, mut events| {
        Box::pin(async move {
            while let Some(event) = events.next().await {
                // Dropping the stream unread cancels it.
                drop(event);
            }
        })
    }))
    .await;
    let (session, _events) = client(addr).await;
    let transfer = session.stream(Pattern::new(MIB), StreamOptions::pull("unwanted"));
    let outcome = tokio::time::timeout(Duration::from_secs(10), transfer)
        .await
        .unwrap();
    assert!(
        matches!(outcome, Err(TransferError::CancelledByPeer)),
        "{outcome:?}"
    );
    let waited = session
        .wait_for_stream("never", Duration::from_millis(100))
        .await;
    assert_eq!(
        waited.unwrap_err(),
        camp_server::session::WaitError::Timeout
    );
}

/// A bare WebSocket peer speaking CAMP frames.
struct Raw {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    sid: u64,
}

impl Raw {
    async fn connect(addr: SocketAddr, sid: u64, features: u64) -> Raw {
        let url = format!("ws://{addr}/?authorization=Bearer%20{TOKEN}&x-camp-sid={sid}");
        let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        let mut raw = Raw { ws, sid };
        let Body::EndpointInfo {
            ack, features: f, ..
        } = raw.recv().await.body
        else {
            panic!("expected ENDPOINT_INFO")
        };
        assert_eq!(f, protocol::FEATURES);
        raw.send(Body::Ack { acked: ack }).await;
        raw.send(Body::EndpointInfo {
            ack: 0,
            version: 1,
            features,
        })
        .await;
        assert_eq!(raw.recv().await.body, Body::Ack { acked: 0 });
        raw
    }

    async fn send(&mut self, body: Body) {
        let bytes = Frame::new(self.sid, body).encode();
        self.ws.send(Ws::Binary(bytes)).await.unwrap();
    }

    async fn recv(&mut self) -> Frame {
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(10), self.ws.next())
                .await
                .expect("a frame within 10 s")
                .expect("connection open")
                .unwrap();
            match msg {
                Ws::Binary(b) => return Frame::decode(b).unwrap(),
                Ws::Close(f) => panic!("closed: {f:?}"),
                _ => {}
            }
        }
    }

    /// The next frame that is not an ACK or heartbeat.
    async fn recv_data(&mut self) -> Body {
        loop {
            let f = self.recv().await;
            match f.body {
                Body::Ack { .. } | Body::Ping(PingPong::Pong) => {}
                Body::Ping(PingPong::Ping) => self.send(Body::Ping(PingPong::Pong)).await,
                body => return body,
            }
        }
    }

    /// Acknowledges `body` if it is ACK-tracked.
    async fn ack(&mut self, body: &Body) {
        if let Some(acked) = body.ack() {
            self.send(Body::Ack { acked }).await;
        }
    }

    async fn close_code(&mut self) -> u16 {
        loop {
            match tokio::time::timeout(Duration::from_secs(10), self.ws.next())
                .await
                .unwrap()
            {
                Some(Ok(Ws::Close(Some(f)))) => return u16::from(f.code),
                Some(Ok(_)) => {}
                other => panic!("no close frame: {other:?}"),
            }
        }
    }
}

/// A server whose application streams `size` pattern bytes to every
/// session with the given options and reports the outcome.
async fn sending_server(
    options: StreamOptions,
    size: u64,
) -> (
    SocketAddr,
    mpsc::UnboundedReceiver<Result<u64, TransferError>>,
    TestServer,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let (addr, server) = serve(Arc::new(move |session, mut events| {
        let tx = tx.clone();
        let options = options.clone();
        Box::pin(async move {
            let transfer = session.stream(Pattern::new(size), options);
            tokio::spawn(async move { while events.next().await.is_some() {} });
            let _ = tx.send(transfer.await);
        })
    }))
    .await;
    (addr, rx, server)
}

#[tokio::test]
async fn push_chunks_on_the_wire_have_byte_position_offsets() {
    let size = 2 * MIB + MIB / 2 + 1;
    let (addr, mut outcome, _server) =
        sending_server(StreamOptions::push("wire").size(size), size).await;
    let mut raw = Raw::connect(addr, 7, protocol::FEATURE_TRANSACTIONS).await;
    let start = raw.recv_data().await;
    raw.ack(&start).await;
    let Body::TxStart {
        tx_id,
        size: announced,
        behaviour,
        name,
        ..
    } = start
    else {
        panic!("expected TX_START, got {start:?}")
    };
    assert_eq!(
        (announced, behaviour, name.as_str()),
        (size as i64, Behaviour::Push, "wire")
    );
    assert_eq!(tx_id % 2, 0, "servers use even transaction ids");
    let mut offset = 0u64;
    let mut want = Vec::new();
    loop {
        let body = raw.recv_data().await;
        raw.ack(&body).await;
        match body {
            Body::TxChunk {
                tx_id: id,
                offset: o,
                data,
            } => {
                assert_eq!(id, tx_id);
                assert_eq!(
                    o, offset,
                    "offset = byte position of the chunk's first byte"
                );
                assert!(!data.is_empty() && data.len() <= protocol::MAX_PAYLOAD);
                want.resize(data.len(), 0);
                expected(o, &mut want);
                assert!(data[..] == want[..]);
                offset += data.len() as u64;
            }
            Body::TxFinish { tx_id: id, .. } => {
                assert_eq!(id, tx_id);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(offset, size);
    assert_eq!(outcome.recv().await.unwrap().unwrap(), size);
}

#[tokio::test]
async fn pull_sender_answers_only_fetched_ranges_and_finishes_when_all_served() {
    let size = 3 * MIB;
    let (addr, mut outcome, _server) = sending_server(StreamOptions::pull("pulled"), size).await;
    let mut raw = Raw::connect(addr, 8, protocol::FEATURE_TRANSACTIONS).await;
    let start = raw.recv_data().await;
    raw.ack(&start).await;
    let Body::TxStart {
        tx_id,
        size: announced,
        behaviour,
        ..
    } = start
    else {
        panic!("expected TX_START")
    };
    assert_eq!((announced, behaviour), (size as i64, Behaviour::Pull));
    // Out of order, overlapping, one past the end, one larger than 1 MiB.
    let ranges = [
        (2 * MIB, 4 * MIB),
        (100, 200),
        (150, 250),
        (0, 2 * MIB + 10),
    ];
    for (i, &(s, e)) in ranges.iter().enumerate() {
        raw.send(Body::TxFetch {
            ack: 100 + i as u32,
            tx_id,
            start: s,
            end: e,
        })
        .await;
        let mut pos = s;
        let end = e.min(size);
        while pos < end {
            match raw.recv_data().await {
                Body::TxChunk {
                    tx_id: id,
                    offset,
                    data,
                } => {
                    assert_eq!(id, tx_id);
                    assert_eq!(offset, pos, "chunks answer the range in order");
                    assert!(data.len() <= protocol::MAX_PAYLOAD);
                    assert!(
                        offset + data.len() as u64 <= end,
                        "nothing outside the range"
                    );
                    let mut want = vec![0; data.len()];
                    expected(offset, &mut want);
                    assert!(data[..] == want[..]);
                    pos += data.len() as u64;
                }
                other => panic!("unexpected {other:?} while serving {s}..{e}"),
            }
        }
    }
    let finish = raw.recv_data().await;
    assert!(
        matches!(finish, Body::TxFinish { tx_id: id, .. } if id == tx_id),
        "{finish:?}"
    );
    raw.ack(&finish).await;
    assert_eq!(outcome.recv().await.unwrap().unwrap(), size);
}

/// A server that reports every stream's read outcome and name.
async fn reading_server() -> (
    SocketAddr,
    mpsc::UnboundedReceiver<(String, io::Result<Vec<u8>>)>,
    TestServer,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let (addr, server) = serve(Arc::new(move |_session, mut events| {
        let tx = tx.clone();
        Box::pin(async move {
            while let Some(event) = events.next().await {
                if let SessionEvent::Stream(mut s) = event {
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        let mut data = Vec::new();
                        let r = s.read_to_end(&mut data).await.map(|_| data);
                        let _ = tx.send((s.name().to_string(), r));
                    });
                }
            }
        })
    }))
    .await;
    (addr, rx, server)
}

/// Expects an ERROR mentioning `what`, then TX_CANCEL for `tx_id`.
async fn expect_error_and_cancel(raw: &mut Raw, tx_id: u32, what: &str) {
    let error = raw.recv_data().await;
    raw.ack(&error).await;
    let Body::Error { message, .. } = error else {
        panic!(
            "expected ERROR, got {error:?} (then {:?})",
            raw.recv_data().await
        )
    };
    assert!(message.contains(what), "{message}");
    let cancel = raw.recv_data().await;
    raw.ack(&cancel).await;
    assert!(
        matches!(cancel, Body::TxCancel { tx_id: id, .. } if id == tx_id),
        "{cancel:?}"
    );
}

#[tokio::test]
async fn gaps_overlaps_and_chunks_past_the_size_fail_the_transaction_only() {
    let (addr, mut reads, _server) = reading_server().await;
    let mut raw = Raw::connect(addr, 9, protocol::FEATURE_TRANSACTIONS).await;
    let chunk = |tx_id, offset, data: &'static [u8]| Body::TxChunk {
        tx_id,
        offset,
        data: Bytes::from_static(data),
    };
    let start = |tx_id, size| Body::TxStart {
        ack: tx_id,
        tx_id,
        size,
        behaviour: Behaviour::Push,
        name: format!("t{tx_id}"),
    };

    raw.send(start(1, -1)).await;
    raw.send(chunk(1, 0, b"abc")).await;
    raw.send(chunk(1, 5, b"def")).await; // gap
    expect_error_and_cancel(&mut raw, 1, "gap").await;

    raw.send(start(3, -1)).await;
    raw.send(chunk(3, 0, b"abc")).await;
    raw.send(chunk(3, 2, b"def")).await; // overlap
    expect_error_and_cancel(&mut raw, 3, "overlap").await;

    raw.send(start(5, 4)).await;
    raw.send(chunk(5, 0, b"abc")).await;
    raw.send(chunk(5, 3, b"de")).await; // past the size
    expect_error_and_cancel(&mut raw, 5, "past the announced size").await;

    raw.send(start(7, 4)).await;
    raw.send(chunk(7, 0, b"abc")).await;
    raw.send(Body::TxFinish { ack: 70, tx_id: 7 }).await; // short
    expect_error_and_cancel(&mut raw, 7, "3 of the announced 4").await;

    for _ in 0..4 {
        let (name, read) = reads.recv().await.unwrap();
        let err = read.expect_err(&name);
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{name}: {err}");
    }

    // The session goes on: a correct stream with an empty name arrives as
    // `anonymous`, and a chunk split at any offset is reassembled.
    raw.send(Body::TxStart {
        ack: 90,
        tx_id: 9,
        size: 6,
        behaviour: Behaviour::Push,
        name: String::new(),
    })
    .await;
    raw.send(chunk(9, 0, b"hel")).await;
    raw.send(chunk(9, 3, b"lo!")).await;
    raw.send(Body::TxFinish { ack: 91, tx_id: 9 }).await;
    let (name, read) = reads.recv().await.unwrap();
    assert_eq!(name, "anonymous");
    assert_eq!(read.unwrap(), b"hello!");

    // A chunk for a transaction that was never opened is malformed input.
    raw.send(chunk(41, 0, b"x")).await;
    let Body::Error { message, .. } = raw.recv_data().await else {
        panic!()
    };
    assert!(message.contains("not open"), "{message}");
}

#[tokio::test]
async fn transaction_frames_from_a_peer_without_the_feature_close_with_4002() {
    let (addr, _server) = echo_server().await;
    let mut raw = Raw::connect(addr, 10, 0).await;
    raw.send(Body::TxStart {
        ack: 1,
        tx_id: 1,
        size: 1,
        behaviour: Behaviour::Push,
        name: "x".into(),
    })
    .await;
    assert_eq!(raw.close_code().await, protocol::close::SERVER_ERROR);
}

#[tokio::test]
async fn streaming_to_a_peer_without_the_feature_is_refused() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (addr, _server) = serve(Arc::new(move |session, _events| {
        let tx = tx.clone();
        Box::pin(async move {
            let _ = tx.send(
                session
                    .stream(Pattern::new(10), StreamOptions::default())
                    .await,
            );
        })
    }))
    .await;
    let _raw = Raw::connect(addr, 11, 0).await;
    let outcome = rx.recv().await.unwrap();
    assert!(
        matches!(outcome, Err(TransferError::NotSupported)),
        "{outcome:?}"
    );
}
