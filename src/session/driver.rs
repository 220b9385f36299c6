//! The task that owns one connection: it reads frames, runs them through
//! the filter, and writes and flushes what is queued, in one loop
//! (mini-redis's `Handler::run`, hyper's h1 dispatcher): handshake, ACKs,
//! heartbeat, transactions, and the close sequence.
//!
//! Each turn of the loop waits for the first of: a WebSocket message (while
//! reading is allowed), a command from a handle, a timer, shutdown, or the
//! end of a pause. Before it waits, everything queued is handed to the
//! WebSocket; the socket is flushed when nothing else is ready (the
//! application included: see `poll_wake`), at the start of every other
//! poll of the task, after [`TURNS_PER_FLUSH`] turns, at the queue's
//! high-water mark, and when the task yields after
//! [`TURNS_PER_POLL`] turns; so a burst of frames read together is answered
//! with one write. (A filter call that suspends the task is not a yield of
//! the loop: the turn bounds still hold across it.)

use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, Interval, Sleep};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};

use super::ack::AckTracker;
use super::queue::{Backpressure, Class, Item, Pushed, Queue};
use super::transaction::{RxBudget, Transactions, TxEffect};
use super::{
    CloseInfo, Command, DeliveryError, DeliveryTx, Direction, Event, EventBytes, Filter, Inbox,
    Message, Session, SessionEvents, Stats, Verdict,
};
use crate::metrics::{Metrics, Tally, Tolerated};
use crate::protocol::{self, Body, Frame, FrameError, PingPong, close};

/// Which end of the connection this is. The server speaks first in the
/// handshake and sends the heartbeat; the client answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// Accepted connection.
    Server,
    /// Dialed connection (the client, and peers).
    Client,
}

/// Per-session settings, fixed when the session starts.
#[derive(Debug, Clone)]
pub(crate) struct SessionConfig {
    /// Heartbeat interval; also the liveness window.
    pub keep_alive: Duration,
    /// How long the peer has to complete the handshake.
    pub handshake_timeout: Duration,
    /// Outgoing queue limits.
    pub backpressure: Backpressure,
    /// Feature flags this endpoint announces.
    pub features: u64,
    /// Where frames, bytes, round trips and drops are counted.
    pub metrics: Arc<Metrics>,
    /// Refuse the deviations the reference server accepts
    /// ([`Tolerated`]) instead of accepting and counting them.
    pub strict: bool,
    /// Limits on transactions (the spool budget shared server-wide).
    pub tx_limits: crate::session::transaction::TxLimits,
}

/// Everything a session needs besides its connection.
pub(crate) struct Setup {
    /// The session id (`x-camp-sid`).
    pub sid: u64,
    /// Server or client end.
    pub role: Role,
    /// The peer's address.
    pub remote: Option<SocketAddr>,
    /// Settings.
    pub config: SessionConfig,
    /// What every message passes through.
    pub filter: Arc<dyn Filter>,
    /// Turns true when the session must close gracefully (server shutdown).
    pub shutdown: watch::Receiver<bool>,
}

/// How many malformed frames a session may send before it is closed: each
/// is answered with an ERROR frame, but a peer that only sends garbage is
/// cut off rather than answered forever.
const MAX_MALFORMED: u32 = 64;

/// How long to wait for the peer's close reply after we closed.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// Capacity of the application's event channel; a full channel slows the
/// session's reading, which is the backpressure a slow application exerts.
const EVENTS_CAPACITY: usize = 256;

/// Most turns (frames read, commands served) between two flushes while
/// input keeps arriving, so that ACKs and replies are not held back for a
/// whole long burst (a burst of 16 messages, the peer's 16 ACKs and our 16
/// answers is 48 turns, which still leave in one write).
const TURNS_PER_FLUSH: u32 = 64;

/// Turns (frames read, commands served) between two additions of this
/// session's counts to the metrics while it is busy.
const TURNS_PER_TALLY: u32 = 32;

/// Waits for the application's answers that found it still busy, in a
/// row, after which the session stops waiting (see `poll_wake`) and only
/// tries again every [`ANSWER_RETRY`]th time.
const ANSWER_MISSES: u8 = 3;

/// See [`ANSWER_MISSES`].
const ANSWER_RETRY: u8 = 16;

/// The session waits for the application's answers only when what it was
/// delivered since the last flush is at most this many payload bytes:
/// small messages, whose ACKs in a write of their own cost about as much
/// as the answers. Beyond it the answers are large writes anyway, and
/// holding the ACKs for them measured slower (4 KiB messages at 1,000
/// sessions: 0.77 → 0.64 of the bare stack).
const ANSWER_WAIT_BYTES: usize = 8 * 1024;

/// Most turns in one poll of the session's task before it yields to the
/// runtime (tokio's own cooperative budget is 128 operations).
const TURNS_PER_POLL: u32 = 128;

/// A session whose outgoing queue or receive budget held this much at once
/// has its freed buffers returned to the system when it ends
/// (`memory::release_freed_heap_soon`).
const BIG_SESSION_BYTES: usize = 1024 * 1024;

/// Builds a session on an upgraded WebSocket and runs the CAMP handshake.
/// On success the session is whole (handle, events, task); the caller runs
/// [`Driver::run`] (on its own task or awaited in place). On failure the
/// connection was closed and the reason is returned. The one way every
/// session starts: accepted, dialled by a client, dialled as a peer.
pub(crate) async fn open<S>(
    ws: WebSocketStream<S>,
    setup: Setup,
) -> Result<(Session, SessionEvents, Driver<S>), CloseInfo>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Setup {
        sid,
        role,
        remote,
        config,
        filter,
        shutdown,
    } = setup;
    let queue = Arc::new(Queue::new(config.backpressure));
    let (session, inbox) = Session::new(sid, remote, queue.clone());
    let tx = Transactions::new(
        sid,
        queue.clone(),
        role == Role::Server,
        !config.strict,
        session.command_sender(),
        config.tx_limits.clone(),
        config.metrics.clone(),
    );
    let keep_alive = config.keep_alive;
    let mut heartbeat = tokio::time::interval_at(Instant::now() + keep_alive, keep_alive);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (events_tx, events) = event_channel();
    let mut driver = Driver {
        ws,
        out: VecDeque::new(),
        unflushed: 0,
        close_sent: false,
        write_blocked: false,
        turns: 0,
        yielded: true,
        turns_since_yield: 0,
        write_first: false,
        answers_due: false,
        answer_waited: false,
        answered_bytes: 0,
        answer_misses: 0,
        answer_skips: 0,
        turns_since_flush: 0,
        clock: None,
        queue,
        bytes_tx: 0,
        tally: Tally::default(),
        counted: false,
        bytes_rx: 0,
        sid,
        role,
        config,
        filter,
        acks: AckTracker::new(),
        malformed: 0,
        tx,
        info_ack: None,
        info_acked: false,
        implicit: false,
        pending: None,
        logged: 0,
        session: session.clone(),
        inbox,
        events: events_tx,
        waits: Waits {
            shutdown: Box::pin(shutting_down(shutdown)),
            heartbeat,
            expiry: None,
            expiry_at: None,
            resume: None,
            reserve: None,
        },
    };
    let features = driver.handshake().await?;
    session.set_peer_features(features);
    driver.trim();
    Ok((session, events, driver))
}

/// One connection's state, owned by its task.
pub(crate) struct Driver<S> {
    /// The connection, read and written by this task only.
    ws: WebSocketStream<S>,
    /// Items taken from the queue, not yet handed to the WebSocket.
    out: VecDeque<Item>,
    /// Bytes handed to the WebSocket since the last flush.
    unflushed: usize,
    /// Whether our close frame was handed to the WebSocket.
    close_sent: bool,
    /// Whether the socket had no room at the last try (the peer is not
    /// reading as fast as we write).
    write_blocked: bool,
    /// Turns since the counts were last added to the metrics (its parity
    /// also alternates between commands and frames).
    turns: u32,
    /// The task yielded since the last turn: the next turn starts a poll.
    yielded: bool,
    /// Turns in this poll of the task (bounded by [`TURNS_PER_POLL`]).
    turns_since_yield: u32,
    /// Whether this poll of the task writes before it reads.
    write_first: bool,
    /// Messages went to the application since the last flush and the
    /// flush has not yet waited for its answers (see `poll_wake`).
    answers_due: bool,
    /// A yield was made waiting for the current answers (the poll after it
    /// takes them before it flushes).
    answer_waited: bool,
    /// Payload bytes delivered to the application since the last flush.
    answered_bytes: usize,
    /// Waits in a row after which the application was still busy.
    answer_misses: u8,
    /// Chances to wait skipped since waiting stopped paying off.
    answer_skips: u8,
    /// Turns since the socket was last flushed.
    turns_since_flush: u32,
    /// The time, read once per poll of the task (see `now`).
    clock: Option<std::time::Instant>,
    /// Outgoing frames (ours, and the transaction sender tasks').
    queue: Arc<Queue>,
    /// Bytes of frames written.
    bytes_tx: u64,
    /// Frames, bytes and round trips not yet added to the metrics.
    tally: Tally,
    /// Whether this session is counted in `camp_sessions_open`.
    counted: bool,
    /// Bytes of frames received.
    bytes_rx: u64,
    /// This session's id; stamped on every outgoing frame.
    sid: u64,
    /// Server or client end.
    role: Role,
    /// Settings.
    config: SessionConfig,
    /// What every message passes through.
    filter: Arc<dyn Filter>,
    /// Pending ACKs of frames we sent.
    acks: AckTracker,
    /// Malformed frames received so far.
    malformed: u32,
    /// Open transactions (streams) both ways.
    tx: Transactions,
    /// The ack id of our ENDPOINT_INFO, until the peer ACKs it.
    info_ack: Option<u32>,
    /// Whether the peer ACKed our ENDPOINT_INFO.
    info_acked: bool,
    /// Whether the handshake was implicit (the peer sent data after ACKing
    /// our ENDPOINT_INFO, without its own): its features are learnt from
    /// the frames it sends.
    implicit: bool,
    /// A frame read during the handshake that the session must handle
    /// first (the data that made an implicit handshake).
    pending: Option<Frame>,
    /// Tolerated deviations already logged for this session (bit per
    /// [`Tolerated`] kind): each is logged once per session, counted always.
    logged: u8,
    /// The handle this task serves.
    session: Session,
    /// Requests from the handles.
    inbox: Arc<Inbox>,
    /// The application's events.
    events: EventSender,
    /// What the loop waits on besides the socket and the commands; kept
    /// across turns so that nothing is re-armed unless it changed.
    waits: Waits,
}

/// The loop's timers and rarely needed waits.
struct Waits {
    /// Completes when the server shuts down.
    shutdown: Pin<Box<dyn Future<Output = ()> + Send>>,
    /// PING and liveness check, every keep-alive interval.
    heartbeat: Interval,
    /// The oldest pending ACK's deadline.
    /// (Allocated while something is pending: idle sessions hold none.)
    expiry: Option<Pin<Box<Sleep>>>,
    /// What `expiry` is set to (at or before the oldest pending ACK's
    /// deadline; see `arm_expiry`).
    expiry_at: Option<Instant>,
    /// While reading is paused: completes when the cause may have eased.
    resume: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    /// While the application's event channel is full: completes when it
    /// has room (false: the application is gone).
    reserve: Option<Pin<Box<dyn Future<Output = bool> + Send>>>,
}

/// What ended the main loop.
enum Exit {
    /// The peer is gone or closed; nothing more to send.
    Peer(CloseInfo),
    /// We decided to close: say BYE and close with this code.
    Local(u16, String),
}

/// What woke the loop.
enum Wake {
    /// A WebSocket message, or the end of the connection.
    Read(Option<Result<WsMessage, WsError>>),
    /// A request from a handle.
    Command(Command),
    /// The heartbeat interval passed.
    Tick,
    /// The oldest pending ACK is due.
    Expiry,
    /// The server shuts down.
    Shutdown,
    /// A pause of reading may be over.
    Resumed,
    /// A place in the application's event channel.
    Reserved(bool),
    /// Writing failed: the connection is gone.
    WriteFailed(WsError),
}

/// Why reading from the peer is paused, if it is.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
struct Paused {
    /// Stream readers are behind (receive budget spent).
    readers: bool,
    /// The peer does not read what we send (queue at its caps).
    congested: bool,
    /// The application has not taken `max_queued_bytes` of messages.
    app: bool,
}

impl Paused {
    fn any(self) -> bool {
        self.readers || self.congested || self.app
    }
}

impl<S> Driver<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    /// Counts a tolerated deviation; logs it once per session.
    fn tolerate(&mut self, kind: Tolerated, what: &str) {
        self.config.metrics.tolerated(kind);
        let bit = 1 << (kind as u8);
        if self.logged & bit == 0 {
            self.logged |= bit;
            tracing::info!(
                sid = self.sid,
                kind = kind.label(),
                "tolerated, as the reference server does (strict mode refuses it): {what}"
            );
        }
    }

    fn push(&mut self, body: Body, class: Class) {
        // Only data frames are ever dropped, and they all carry an ack id.
        let dropped = match self.queue.push(Item::encode(self.sid, body, class)) {
            Pushed::Queued(evicted) => evicted,
            Pushed::Dropped(id) => id.into_iter().collect(),
            Pushed::Closed => Vec::new(),
        };
        if !dropped.is_empty() {
            let policy = self.queue.limits().drop_policy;
            self.config
                .metrics
                .queue_dropped(policy.label(), dropped.len() as u64);
        }
        for id in dropped {
            self.acks.forget(id, DeliveryError::DroppedByQueue);
        }
    }

    /// The time for ACK bookkeeping (send times, round trips): read once
    /// per poll of the task rather than once per frame (two clock reads per
    /// echo were 3 % of the server's time). A poll lasts at most
    /// `TURNS_PER_POLL` turns, tens of microseconds, well under the
    /// round-trip histogram's smallest bucket (100 µs) and the 2.5 s
    /// timeout.
    fn now(&mut self) -> std::time::Instant {
        *self.clock.get_or_insert_with(std::time::Instant::now)
    }

    /// Sends an ACK-tracked protocol frame; returns its ack id.
    fn push_tracked(&mut self, mut body: Body) -> u32 {
        let now = self.now();
        let id = self.acks.track(now, None);
        body.set_ack(id);
        self.push(body, Class::Control);
        id
    }

    fn on_ack(&mut self, id: u32) {
        if self.info_ack == Some(id) {
            self.info_ack = None;
            self.info_acked = true;
        }
        let now = self.now();
        if let Some(rtt) = self.acks.ack(id, now) {
            self.tally.ack_rtt(&self.config.metrics, rtt);
        }
    }

    fn endpoint_info(&self) -> Body {
        Body::EndpointInfo {
            ack: 0,
            version: protocol::VERSION,
            features: self.config.features,
        }
    }

    /// Answers a malformed message with an ERROR frame; closes the session
    /// once the peer has sent too many.
    fn malformed(&mut self, why: String) -> Option<Exit> {
        self.malformed += 1;
        self.config
            .metrics
            .malformed
            .fetch_add(1, Ordering::Relaxed);
        tracing::debug!(sid = self.sid, "malformed input: {why}");
        if self.malformed > MAX_MALFORMED {
            return Some(Exit::Local(
                close::CLIENT_ERROR,
                format!("too many malformed frames (last: {why})"),
            ));
        }
        self.push_tracked(Body::Error {
            ack: 0,
            message: why,
        });
        None
    }

    /// Turns one WebSocket message into a CAMP frame. Malformed input is
    /// answered here (`Ok(None)`); the end of the connection is an
    /// `Err(Exit)`.
    fn on_ws_message(
        &mut self,
        read: Option<Result<WsMessage, WsError>>,
    ) -> Result<Option<Frame>, Exit> {
        let msg = match read {
            Some(Ok(msg)) => msg,
            Some(Err(WsError::Capacity(e))) => {
                return Err(Exit::Local(
                    close::CLIENT_ERROR,
                    format!("frame too large: {e}"),
                ));
            }
            Some(Err(e)) => return Err(Exit::Peer(lost(&e.to_string()))),
            None => return Err(Exit::Peer(lost("connection lost"))),
        };
        let why = match msg {
            WsMessage::Binary(bytes) => {
                let len = bytes.len();
                self.bytes_rx += len as u64;
                match Frame::decode(bytes) {
                    Ok(frame) if frame.sid != self.sid && self.config.strict => {
                        format!("frame for session {} on session {}", frame.sid, self.sid)
                    }
                    Ok(frame) => {
                        if frame.sid != self.sid {
                            let what = format!(
                                "frames carry sid {} on the session {} of this connection",
                                frame.sid, self.sid
                            );
                            self.tolerate(Tolerated::ForeignSid, &what);
                        }
                        self.tally.frame_in(frame.body.frame_type(), len);
                        return Ok(Some(frame));
                    }
                    Err(e) => malformed_text(&e),
                }
            }
            WsMessage::Text(_) => "text WebSocket messages are not CAMP frames; send binary".into(),
            WsMessage::Close(frame) => {
                let (code, reason) = frame
                    .map(|f| (u16::from(f.code), f.reason.to_string()))
                    .unwrap_or((1005, String::new()));
                return Err(Exit::Peer(CloseInfo {
                    code,
                    reason,
                    by_peer: true,
                }));
            }
            WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_) => return Ok(None),
        };
        match self.malformed(why) {
            Some(exit) => Err(exit),
            None => Ok(None),
        }
    }

    /// Reads the next CAMP frame (during the handshake: no commands, no
    /// application yet), writing what is queued meanwhile.
    async fn next_frame(&mut self) -> Result<Frame, Exit> {
        loop {
            let wake = poll_fn(|cx| self.poll_wake(cx, false)).await;
            match wake {
                Wake::Read(read) => {
                    if let Some(frame) = self.on_ws_message(read)? {
                        return Ok(frame);
                    }
                }
                Wake::Shutdown => {
                    return Err(Exit::Local(close::GRACEFUL, "server shutting down".into()));
                }
                Wake::WriteFailed(e) => {
                    return Err(Exit::Peer(lost(&format!(
                        "connection lost while writing: {e}"
                    ))));
                }
                Wake::Resumed
                | Wake::Tick
                | Wake::Expiry
                | Wake::Reserved(_)
                | Wake::Command(_) => {}
            }
        }
    }

    async fn handshake_inner(&mut self) -> Result<u64, Exit> {
        if self.role == Role::Server {
            let info = self.endpoint_info();
            self.info_ack = Some(self.push_tracked(info));
        }
        loop {
            // A peer that floods the handshake with PINGs and does not
            // read our PONGs is not read until it does (the handshake
            // timeout ends it otherwise): `next_frame` pauses on a
            // congested queue.
            let frame = self.next_frame().await?;
            match frame.body {
                Body::Ack { acked } => self.on_ack(acked),
                Body::Ping(PingPong::Ping) => self.push(Body::Ping(PingPong::Pong), Class::Control),
                Body::Ping(PingPong::Pong) => {}
                Body::EndpointInfo {
                    ack,
                    version,
                    features,
                } => {
                    self.push(Body::Ack { acked: ack }, Class::Control);
                    check_version(version)?;
                    if self.role == Role::Client {
                        let info = self.endpoint_info();
                        self.push_tracked(info);
                    } else if let Some(unacked) = self.info_ack.take() {
                        // The client sent its ENDPOINT_INFO without ACKing
                        // ours: it may not have seen it (the Node client
                        // attaches its listener after the socket opens and
                        // then sends its own). Send ours again, now that it
                        // listens; the first one is forgotten, not counted
                        // as an ack timeout.
                        self.acks.forget(unacked, DeliveryError::Closed);
                        let info = self.endpoint_info();
                        self.info_ack = Some(self.push_tracked(info));
                    }
                    return Ok(features);
                }
                Body::Bye { ack, reason } => {
                    self.push(Body::Ack { acked: ack }, Class::Control);
                    return Err(Exit::Peer(CloseInfo {
                        code: close::GRACEFUL,
                        reason,
                        by_peer: true,
                    }));
                }
                body if self.role == Role::Server
                    && !self.config.strict
                    && self.info_acked
                    && (body.frame_type().is_transaction()
                        || matches!(
                            body,
                            Body::Utf8 { .. } | Body::Binary { .. } | Body::Error { .. }
                        )) =>
                {
                    // The browser client: it ACKed our ENDPOINT_INFO and
                    // sends data without its own. Its version is taken as
                    // ours; its features from the frames it sends.
                    let ty = body.frame_type();
                    let what = format!("{} without the peer's ENDPOINT_INFO", ty.name());
                    self.tolerate(Tolerated::ImplicitHandshake, &what);
                    self.implicit = true;
                    self.pending = Some(Frame::new(self.sid, body));
                    return Ok(if ty.is_transaction() {
                        protocol::FEATURE_TRANSACTIONS
                    } else {
                        0
                    });
                }
                other => {
                    return Err(Exit::Local(
                        close::CLIENT_ERROR,
                        format!(
                            "expected ENDPOINT_INFO, got {} before the handshake",
                            other.frame_type().name()
                        ),
                    ));
                }
            }
        }
    }

    /// Runs the handshake within the handshake timeout. On failure the
    /// connection is closed and the reason returned. A shutdown during the
    /// handshake closes gracefully at once rather than waiting for the
    /// peer.
    async fn handshake(&mut self) -> Result<u64, CloseInfo> {
        let timeout = self.config.handshake_timeout;
        let exit = match tokio::time::timeout(timeout, self.handshake_inner()).await {
            Ok(Ok(features)) => return Ok(features),
            Ok(Err(exit)) => exit,
            Err(_) => Exit::Local(
                close::CLIENT_ERROR,
                format!("handshake not completed within {timeout:?}"),
            ),
        };
        Err(Box::pin(self.finish(exit)).await)
    }

    /// Why reading is paused now, if it is.
    fn paused(&self) -> Paused {
        Paused {
            // Chunks buffered for slow stream readers.
            readers: self.tx.budget().exhausted(),
            // The peer does not read what we send (the queue is at its
            // caps and the socket has no room): every frame read may queue
            // a reply (an ACK, a PONG), so we stop reading. A queue kept
            // full by our own stream sender while the socket drains is no
            // reason to stop reading.
            congested: self.write_blocked && self.queue.congested(),
            // The application has not taken this many bytes of messages:
            // the per-session cap holds for what we deliver too.
            // (An application that dropped its events takes nothing more,
            // and what it left is discarded: no reason to wait for it.)
            app: !self.events.gone
                && !self.events.tx.is_closed()
                && self.events.waiting.bytes.load(Ordering::Acquire)
                    >= self.queue.limits().max_queued_bytes,
        }
    }

    /// A future that completes when a cause of `paused` may have eased.
    fn resume_when(&self, paused: Paused) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let budget: Arc<RxBudget> = self.tx.budget().clone();
        let queue = self.queue.clone();
        let waiting = self.events.waiting.clone();
        let events = self.events.tx.clone();
        Box::pin(async move {
            tokio::select! {
                _ = budget.room(), if paused.readers => {}
                _ = queue.drained(), if paused.congested => {}
                _ = waiting.taken.notified(), if paused.app => {}
                _ = events.closed(), if paused.app => {}
            }
        })
    }

    /// One turn's wait: writes what is queued, then returns the first thing
    /// that is ready. `running` is false during the handshake (no commands,
    /// no application, no heartbeat yet).
    fn poll_wake(&mut self, cx: &mut Context<'_>, running: bool) -> Poll<Wake> {
        // Wakers are registered once per poll of the task, not per turn:
        // the first turn of a poll and the last (before `Pending`) look at
        // everything, registering the task with each source; the turns in
        // between look only at what has work (the inbox and the queue by
        // their lengths, no lock or registration when empty), and a timer
        // or the shutdown signal that fires meanwhile is seen at the next
        // poll, at most `TURNS_PER_POLL` turns later.
        let fresh = std::mem::take(&mut self.yielded);
        if fresh {
            self.clock = None;
        }
        if fresh && let Poll::Ready(wake) = self.poll_signals(cx, running) {
            return Poll::Ready(wake);
        }
        if self.turns_since_yield >= TURNS_PER_POLL {
            // Commands can keep coming without the socket or a timer ever
            // saying Pending: give the runtime (and the timers, which need
            // its budget) a turn, after putting what is written on the wire.
            if let Err(e) = self.poll_write(cx, true) {
                return Poll::Ready(Wake::WriteFailed(e));
            }
            self.turns_since_yield = 0;
            self.yielded = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        // Tokio's cooperative budget is per poll of the task, and reading a
        // large frame can spend all of it: every other poll starts with a
        // full write and flush, so neither direction starves the other.
        // The poll after a wait for the application's answers does not
        // flush before it has taken them, and does not count: otherwise,
        // with an application that never goes idle, the alternation could
        // always land the full flush on those polls.
        if fresh && !self.answer_waited {
            self.write_first = !self.write_first;
        }
        let flush_first = fresh && self.write_first && !self.answer_waited;
        if let Err(e) = self.poll_write(cx, flush_first) {
            return Poll::Ready(Wake::WriteFailed(e));
        }
        let paused = self.paused();
        let slot_ready = !running || self.events.ready();
        // Commands and frames take turns being looked at first.
        let commands_first = running && self.turns % 2 == 1;
        if commands_first && let Some(command) = self.inbox.try_recv() {
            return self.turn(Wake::Command(command));
        }
        if !paused.any()
            && slot_ready
            && let Poll::Ready(read) = Pin::new(&mut self.ws).poll_next(cx)
        {
            return self.turn(Wake::Read(read));
        }
        if running
            && !commands_first
            && let Some(command) = self.inbox.try_recv()
        {
            return self.turn(Wake::Command(command));
        }
        if paused.any() {
            if self.waits.resume.is_none() {
                if paused.readers {
                    // A pause begins: stream readers or relays are behind.
                    self.config.metrics.limit_hit("max_receive_buffer_bytes");
                }
                self.waits.resume = Some(self.resume_when(paused));
            }
            let resume = self.waits.resume.as_mut().expect("just set");
            if resume.as_mut().poll(cx).is_ready() {
                self.waits.resume = None;
                return Poll::Ready(Wake::Resumed);
            }
        } else {
            self.waits.resume = None;
            if !slot_ready {
                if self.waits.reserve.is_none() {
                    self.waits.reserve = Some(self.events.room());
                }
                let reserve = self.waits.reserve.as_mut().expect("just set");
                if let Poll::Ready(room) = reserve.as_mut().poll(cx) {
                    self.waits.reserve = None;
                    return Poll::Ready(Wake::Reserved(room));
                }
            }
        }
        // Nothing else to do: register with every source before sleeping.
        if running && let Poll::Ready(command) = self.inbox.poll_recv(cx) {
            return self.turn(Wake::Command(command));
        }
        // (Again on a fresh poll: a turn may have re-armed the expiry.)
        if let Poll::Ready(wake) = self.poll_signals(cx, running) {
            return Poll::Ready(wake);
        }
        if self.answers_due {
            // Messages went to the application since the last flush: its
            // answers (an echo, a reply) usually come within a turn of the
            // scheduler. Until it asks for its next event (idle), yield
            // once instead of flushing, so that the ACKs of what was read
            // and the answers leave in one write: one system call and one
            // wake-up of the peer instead of two (measured: the echo made
            // two `sendto` per burst read where the bare stack makes one).
            // Every source is registered above; the cost is one poll. Best
            // effort on a multi-thread runtime: another worker may take the
            // task before the application has answered.
            //
            // Where the application runs on the other core and answers
            // later (one busy session), waiting only adds polls: after
            // `ANSWER_MISSES` waits in a row that found it still busy the
            // session flushes at once, trying a wait again every
            // `ANSWER_RETRY`th time.
            if self.answer_waited {
                if self.events.app_idle() {
                    self.answer_misses = 0;
                } else {
                    self.answer_misses = self.answer_misses.saturating_add(1);
                }
            } else if (self.unflushed > 0 || !self.out.is_empty() || self.queue.filled())
                && self.answered_bytes <= ANSWER_WAIT_BYTES
                && !self.write_blocked
                && !self.events.app_idle()
                && self.answer_worth_waiting()
            {
                self.answer_waited = true;
                self.yielded = true;
                self.turns_since_yield = 0;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            self.answers_due = false;
            self.answer_waited = false;
            self.answered_bytes = 0;
            // It may have answered between the look at the inbox above and
            // going idle: take those answers into this write.
            if running && let Some(command) = self.inbox.try_recv() {
                return self.turn(Wake::Command(command));
            }
        }
        // Put what was written on the wire (and register with the queue).
        self.turns = 0;
        if let Err(e) = self.poll_write(cx, true) {
            return Poll::Ready(Wake::WriteFailed(e));
        }
        self.yielded = true;
        self.turns_since_yield = 0;
        Poll::Pending
    }

    /// Whether to wait for the application's answers this time (see
    /// [`ANSWER_MISSES`]).
    fn answer_worth_waiting(&mut self) -> bool {
        if self.answer_misses < ANSWER_MISSES {
            return true;
        }
        self.answer_skips = self.answer_skips.wrapping_add(1);
        self.answer_skips.is_multiple_of(ANSWER_RETRY)
    }

    /// The shutdown signal and the timers (heartbeat, ACK expiry).
    fn poll_signals(&mut self, cx: &mut Context<'_>, running: bool) -> Poll<Wake> {
        if self.waits.shutdown.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Wake::Shutdown);
        }
        if running && self.waits.heartbeat.poll_tick(cx).is_ready() {
            return Poll::Ready(Wake::Tick);
        }
        if let Some(expiry) = self.waits.expiry.as_mut()
            && self.waits.expiry_at.is_some()
            && expiry.as_mut().poll(cx).is_ready()
        {
            self.waits.expiry_at = None;
            return Poll::Ready(Wake::Expiry);
        }
        Poll::Pending
    }

    /// Counts a turn that found work (see [`TURNS_PER_FLUSH`]).
    fn turn(&mut self, wake: Wake) -> Poll<Wake> {
        self.turns += 1;
        self.turns_since_yield += 1;
        self.turns_since_flush += 1;
        if self.turns >= TURNS_PER_TALLY {
            self.turns = 0;
            // Counted even while the socket is full (a peer streaming to us).
            self.tally.flush(&self.config.metrics);
        }
        Poll::Ready(wake)
    }

    /// Hands queued items to the WebSocket. Without `flush` it takes at
    /// most one batch from the queue (so that reading gets its turn while
    /// a stream fills the queue as fast as the socket drains it); with
    /// `flush` (when nothing else is ready) it writes until the queue is
    /// empty or the socket is full, and flushes. Never blocks: whatever
    /// stops it has registered `cx` to be woken.
    fn poll_write(&mut self, cx: &mut Context<'_>, flush: bool) -> Result<(), WsError> {
        let high_water = self.queue.limits().high_water_mark;
        let mut batches = 0;
        loop {
            if self.out.is_empty() && !self.close_sent {
                if !flush && batches > 0 {
                    break;
                }
                batches += 1;
                // Only the last turn of a poll (a flush) registers for the
                // next push; see `poll_wake`.
                let took = if flush {
                    matches!(self.queue.poll_pop(cx, &mut self.out), Poll::Ready(true))
                } else {
                    self.queue.try_pop(&mut self.out)
                };
                if !took {
                    break;
                }
            }
            let Some(item) = self.out.front() else { break };
            if self.close_sent {
                self.out.clear();
                break;
            }
            match Pin::new(&mut self.ws).poll_ready(cx) {
                Poll::Ready(Ok(())) => self.write_blocked = false,
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => {
                    self.write_blocked = true;
                    return Ok(());
                }
            }
            let len = item.len();
            match self.out.pop_front().expect("front exists") {
                Item::Frame {
                    bytes,
                    ty,
                    ack,
                    class,
                } => {
                    match Pin::new(&mut self.ws).start_send(WsMessage::Binary(bytes)) {
                        Ok(()) => {
                            self.bytes_tx += len as u64;
                            self.tally.frame_out(ty, len);
                        }
                        // Tungstenite's pongs to a peer that pings and does
                        // not read filled its write buffer (capped by
                        // `transport::ws_config`): the frame waits for the
                        // socket to take the buffer.
                        Err(WsError::WriteBufferFull(message)) => {
                            self.config.metrics.limit_hit("websocket_write_buffer");
                            if let WsMessage::Binary(bytes) = *message {
                                self.out.push_front(Item::Frame {
                                    bytes,
                                    ty,
                                    ack,
                                    class,
                                });
                            }
                            match Pin::new(&mut self.ws).poll_flush(cx) {
                                Poll::Ready(Ok(())) => continue,
                                Poll::Ready(Err(e)) => return Err(e),
                                Poll::Pending => {
                                    self.write_blocked = true;
                                    return Ok(());
                                }
                            }
                        }
                        // The peer closed the WebSocket: nothing more can
                        // be sent, but tungstenite's echo of its close
                        // still must be (after the frames still queued).
                        Err(WsError::Protocol(ProtocolError::SendAfterClosing)) => continue,
                        Err(e) => return Err(e),
                    }
                }
                Item::Close { code, reason } => {
                    self.close_sent = true;
                    let close = WsMessage::Close(Some(CloseFrame {
                        code: CloseCode::from(code),
                        reason: close_reason(&reason).into(),
                    }));
                    match Pin::new(&mut self.ws).start_send(close) {
                        // The peer closed first: tungstenite has queued the
                        // echo of its close, which the flush below sends.
                        Ok(()) | Err(WsError::Protocol(_)) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            self.unflushed += len.max(1);
            if self.unflushed >= high_water && !self.poll_flush(cx)? {
                // Registered for the socket's room.
                return Ok(());
            }
        }
        if flush || self.turns_since_flush >= TURNS_PER_FLUSH {
            self.poll_flush(cx)?;
        }
        Ok(())
    }

    /// Flushes what was handed to the WebSocket; false while the socket
    /// has no room (`cx` is woken when it has).
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Result<bool, WsError> {
        // What goes on the wire now is counted before it can be answered.
        self.tally.flush(&self.config.metrics);
        if self.unflushed == 0 {
            return Ok(true);
        }
        match Pin::new(&mut self.ws).poll_flush(cx) {
            Poll::Ready(Ok(())) => {
                self.unflushed = 0;
                self.turns_since_flush = 0;
                self.write_blocked = false;
                self.tally.socket_flush();
                // What was delivered so far has been answered or not: a
                // wait for answers starts again with the next delivery.
                self.answers_due = false;
                self.answer_waited = false;
                self.answered_bytes = 0;
                Ok(true)
            }
            Poll::Ready(Err(e)) => Err(e),
            Poll::Pending => {
                self.write_blocked = true;
                Ok(false)
            }
        }
    }

    /// Runs the session until it ends, then says how it ended.
    pub(crate) async fn run(mut self) -> CloseInfo {
        let session = self.session.clone();
        let metrics = self.config.metrics.clone();
        metrics.sessions_total.fetch_add(1, Ordering::Relaxed);
        metrics.sessions_open.fetch_add(1, Ordering::Relaxed);
        self.counted = true;
        self.filter.clone().opened(&session).await;
        let keep_alive = self.config.keep_alive;
        let mut heard_since_tick = true;
        let mut exit = match self.pending.take() {
            Some(frame) => self.on_frame(frame).await,
            None => None,
        };
        let exit = loop {
            if let Some(exit) = exit.take() {
                break exit;
            }
            self.arm_expiry();
            let wake = poll_fn(|cx| self.poll_wake(cx, true)).await;
            match wake {
                Wake::Read(read) => {
                    heard_since_tick = true;
                    match self.on_ws_message(read) {
                        Ok(Some(frame)) => exit = self.on_frame(frame).await,
                        Ok(None) => {}
                        Err(e) => exit = Some(e),
                    }
                }
                Wake::Command(command) => exit = self.on_command(command).await,
                Wake::Resumed => {}
                Wake::Reserved(room) => self.events.gone |= !room,
                Wake::Tick => {
                    // While our side holds reading up (stream readers or the
                    // application behind), the peer's silence is ours: do
                    // not count it against it. A peer that does not read
                    // what we send (our queue at its caps) gets no such
                    // grace.
                    let paused = self.paused();
                    if !heard_since_tick
                        && self.role == Role::Server
                        && !paused.readers
                        && !paused.app
                        && self.events.ready()
                    {
                        break Exit::Local(
                            close::CLIENT_ERROR,
                            format!("heartbeat timeout: nothing received for {keep_alive:?}"),
                        );
                    }
                    heard_since_tick = false;
                    self.report_evicted();
                    self.trim();
                    let now = Instant::now().into_std();
                    self.tx.expire_idle(&mut self.acks, now, !paused.any());
                    if self.role == Role::Server {
                        self.push(Body::Ping(PingPong::Ping), Class::Control);
                    }
                    let stats = self.stats();
                    session.set_stats(stats);
                    if self.events.tx.capacity() > 1 {
                        let _ = self.events.tx.try_send(Event::Stats(Box::new(stats)));
                    }
                }
                Wake::Expiry => {
                    let expired = self.acks.expire(Instant::now().into_std());
                    metrics.ack_timeouts.fetch_add(expired, Ordering::Relaxed);
                    self.report_evicted();
                }
                Wake::Shutdown => {
                    break Exit::Local(close::GRACEFUL, "server shutting down".into());
                }
                Wake::WriteFailed(e) => {
                    break Exit::Peer(lost(&format!("connection lost while writing: {e}")));
                }
            }
        };
        self.tx.close();
        // Boxed: the close sequence's state is needed once, at the end, and
        // would otherwise be part of every session's task all its life.
        let info = Box::pin(self.finish(exit)).await;
        // A session that held megabytes of buffers (a peer that pushed
        // streams or messages faster than it read) leaves them in the
        // allocator's arenas: give them back once they are freed.
        if self.queue.stats().peak_bytes >= BIG_SESSION_BYTES
            || self.tx.budget().peak() >= BIG_SESSION_BYTES
        {
            crate::memory::release_freed_heap_soon();
        }
        session.set_stats(self.stats());
        session.mark_closed();
        self.filter.clone().closed(&session).await;
        metrics.sessions_open.fetch_sub(1, Ordering::Relaxed);
        self.counted = false;
        // The last slot of the channel is kept for this event: an
        // application that does not read cannot hold the session (its
        // socket, its place in the limits, its id) open. A pending wait
        // for room may hold that slot (tokio hands permits to a waiter
        // one by one): it goes first.
        self.waits.reserve = None;
        let _ = self
            .events
            .tx
            .try_send(Event::Closed(Box::new(info.clone())));
        info
    }

    /// Sets the ACK-expiry timer for the oldest pending ACK. Deadlines are
    /// in send order (each is its send time plus one timeout), so the
    /// oldest one only moves later as ACKs arrive: a timer armed for an
    /// earlier deadline is kept, fires early, finds nothing due and is set
    /// again then. That is at most one early wake-up per timeout instead of
    /// a timer reset per ACK received (1.3 % of the server's time in the
    /// echo benchmark).
    fn arm_expiry(&mut self) {
        let Some(deadline) = self.acks.next_deadline().map(Instant::from_std) else {
            return;
        };
        if self.waits.expiry_at.is_some_and(|armed| armed <= deadline) {
            return;
        }
        match self.waits.expiry.as_mut() {
            Some(expiry) => expiry.as_mut().reset(deadline),
            None => self.waits.expiry = Some(Box::pin(tokio::time::sleep_until(deadline))),
        }
        self.waits.expiry_at = Some(deadline);
    }

    /// Counts the ACKs expired early at `MAX_PENDING_ACKS`.
    fn report_evicted(&mut self) {
        let evicted = self.acks.take_evicted();
        if evicted > 0 {
            let metrics = &self.config.metrics;
            metrics.ack_timeouts.fetch_add(evicted, Ordering::Relaxed);
            metrics.limit_hits_add("max_pending_acks", evicted);
        }
    }

    /// Lets go of what a session that went quiet does not need: empty
    /// buffers keep the capacity of their busiest moment, and the expiry
    /// timer is only needed while an ACK is pending. Called after the
    /// handshake and at each heartbeat, so idle sessions stay small.
    fn trim(&mut self) {
        if self.out.is_empty() {
            self.out = VecDeque::new();
        }
        self.queue.trim();
        self.acks.release();
        if self.acks.next_deadline().is_none() {
            self.waits.expiry = None;
            self.waits.expiry_at = None;
        }
    }

    /// Serves one request from a handle.
    async fn on_command(&mut self, command: Command) -> Option<Exit> {
        match command {
            Command::Send(message, tx) => self.send_message(message, tx).await,
            Command::ExtensionSend(message) => {
                let session = self.session.clone();
                session.set_extension_send(true);
                let exit = self.send_message(message, None).await;
                session.set_extension_send(false);
                exit
            }
            Command::Ping => {
                self.push(Body::Ping(PingPong::Ping), Class::Control);
                None
            }
            Command::Close(code, reason) => Some(Exit::Local(code, reason)),
            Command::Tx(command) => {
                let features = self.session.peer_features();
                self.tx.on_command(&mut self.acks, command, features);
                None
            }
        }
    }

    fn stats(&self) -> Stats {
        Stats {
            rtt_ms: self.acks.srtt_ms(),
            bytes_rx: self.bytes_rx,
            bytes_tx: self.bytes_tx,
            ack_timeouts: self.acks.timeouts(),
            queue_drops: self.queue.drops(),
        }
    }

    /// Runs an outgoing message through the filter and queues it.
    async fn send_message(&mut self, mut message: Message, tx: Option<DeliveryTx>) -> Option<Exit> {
        let fail = |tx: Option<DeliveryTx>, e| {
            if let Some(tx) = tx {
                let _ = tx.send(Err(e));
            }
        };
        if self.filter.wants(Direction::Outbound, &message) {
            let session = self.session.clone();
            let verdict = self
                .filter
                .filter(Direction::Outbound, &session, &mut message)
                .await;
            // The filter may have suspended the task: read the time again.
            self.clock = None;
            match verdict {
                Verdict::Pass => {}
                Verdict::Drop => {
                    fail(tx, DeliveryError::DroppedByExtension);
                    return None;
                }
                Verdict::Close { code, reason } => {
                    fail(tx, DeliveryError::DroppedByExtension);
                    return Some(Exit::Local(code, reason));
                }
            }
        }
        if message.len() > protocol::MAX_PAYLOAD {
            fail(tx, DeliveryError::TooLarge);
            return None;
        }
        let now = self.now();
        let ack = self.acks.track(now, tx);
        let body = match message {
            Message::Utf8(text) => Body::Utf8 { ack, text },
            Message::Binary(data) => Body::Binary { ack, data },
            Message::Error(message) => Body::Error { ack, message },
        };
        self.push(body, Class::Data);
        None
    }

    /// Handles one frame after the handshake. Returns how the session ends,
    /// if this frame ends it.
    async fn on_frame(&mut self, frame: Frame) -> Option<Exit> {
        let ty = frame.body.frame_type();
        if ty.is_transaction()
            && self.implicit
            && self.session.peer_features() & protocol::FEATURE_TRANSACTIONS == 0
        {
            // An implicit handshake announced nothing: the peer's streams
            // show it speaks transactions.
            self.session
                .set_peer_features(self.session.peer_features() | protocol::FEATURE_TRANSACTIONS);
        }
        if ty.is_transaction() && self.session.peer_features() & protocol::FEATURE_TRANSACTIONS == 0
        {
            return Some(Exit::Local(
                close::SERVER_ERROR,
                format!(
                    "{} from a peer that did not announce the transactions feature",
                    ty.name()
                ),
            ));
        }
        if let Some(ack) = frame.body.ack() {
            self.push(Body::Ack { acked: ack }, Class::Control);
        }
        let message = match frame.body {
            Body::Ack { acked } => {
                self.on_ack(acked);
                return None;
            }
            Body::Ping(PingPong::Ping) => {
                self.push(Body::Ping(PingPong::Pong), Class::Control);
                return None;
            }
            Body::Ping(PingPong::Pong) => return None,
            Body::EndpointInfo {
                version, features, ..
            } => {
                // A repeated announcement updates the flags; after an
                // implicit handshake it is the peer's word from now on.
                if let Err(exit) = check_version(version) {
                    return Some(exit);
                }
                self.implicit = false;
                self.session.set_peer_features(features);
                return None;
            }
            Body::Bye { reason, .. } => {
                return Some(Exit::Peer(CloseInfo {
                    code: close::GRACEFUL,
                    reason,
                    by_peer: true,
                }));
            }
            Body::Utf8 { text, .. } => Message::Utf8(text),
            Body::Binary { data, .. } => Message::Binary(data),
            Body::Error { message, .. } => Message::Error(message),
            body @ (Body::TxStart { .. }
            | Body::TxChunk { .. }
            | Body::TxFinish { .. }
            | Body::TxFetch { .. }
            | Body::TxCancel { .. }) => {
                match self.tx.on_frame(&mut self.acks, body) {
                    Some(TxEffect::Malformed(why)) => return self.malformed(why),
                    Some(TxEffect::Tolerated(kind, what)) => self.tolerate(kind, &what),
                    Some(TxEffect::Announce(stream)) => {
                        if let Some(stream) = self.session.offer_stream(stream) {
                            self.events.deliver(Event::Stream(Box::new(stream)));
                        }
                    }
                    None => {}
                }
                return None;
            }
        };
        let mut message = message;
        if self.filter.wants(Direction::Inbound, &message) {
            let verdict = self
                .filter
                .filter(Direction::Inbound, &self.session, &mut message)
                .await;
            // The filter may have suspended the task: read the time again.
            self.clock = None;
            match verdict {
                Verdict::Pass => {}
                Verdict::Drop => return None,
                Verdict::Close { code, reason } => return Some(Exit::Local(code, reason)),
            }
        }
        self.answered_bytes = self.answered_bytes.saturating_add(message.len());
        self.events.deliver(Event::Message(message));
        self.answers_due = true;
        None
    }

    /// Ends the connection: for a local close, BYE then a close frame, then
    /// waits briefly for the peer's close reply. Fails pending deliveries.
    async fn finish(&mut self, exit: Exit) -> CloseInfo {
        let info = match exit {
            Exit::Peer(info) => {
                if info.by_peer && info.code != 1006 {
                    // The peer said BYE (4000) or closed the WebSocket with
                    // any code: answer with our close (RFC 6455 §5.5.1).
                    // After a WebSocket close, tungstenite has queued the
                    // echo of the peer's code; sending ours flushes it.
                    self.queue.push(Item::Close {
                        code: if info.code == 1005 { 1000 } else { info.code },
                        reason: info.reason.clone(),
                    });
                    self.linger().await;
                }
                info
            }
            Exit::Local(code, reason) => {
                tracing::debug!(sid = self.sid, code, "closing: {reason}");
                self.push_tracked(Body::Bye {
                    ack: 0,
                    reason: reason.clone(),
                });
                self.queue.push(Item::Close {
                    code,
                    reason: reason.clone(),
                });
                self.linger().await;
                CloseInfo {
                    code,
                    reason,
                    by_peer: false,
                }
            }
        };
        // Whatever is still queued (a peer that does not read) is dropped
        // with the connection.
        self.queue.close();
        self.acks.close();
        info
    }

    /// Writes what is queued up to our close frame and reads (discarding)
    /// until the peer's close reply, within [`CLOSE_LINGER`].
    async fn linger(&mut self) {
        let mut peer_done = false;
        let done = poll_fn(|cx| {
            if let Err(e) = self.poll_write(cx, true) {
                tracing::debug!(sid = self.sid, "closing: writing failed: {e}");
                return Poll::Ready(());
            }
            while !peer_done {
                match Pin::new(&mut self.ws).poll_next(cx) {
                    Poll::Ready(Some(Ok(WsMessage::Close(_))))
                    | Poll::Ready(None)
                    | Poll::Ready(Some(Err(_))) => {
                        peer_done = true;
                    }
                    Poll::Ready(Some(Ok(_))) => {}
                    Poll::Pending => break,
                }
            }
            let written = self.close_sent && self.unflushed == 0;
            if peer_done && (written || self.out.is_empty() && !self.close_sent) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        });
        let _ = tokio::time::timeout(CLOSE_LINGER, done).await;
    }
}

/// The session's end of the application's event channel, with the count
/// of message bytes the application has not taken yet.
///
/// A frame is read only while the channel has room for what it may carry
/// (one event), so delivering never waits. The session's task is the
/// channel's only sender, so room seen before reading is still there when
/// the frame's event is delivered.
pub(crate) struct EventSender {
    /// The channel.
    tx: mpsc::Sender<Event>,
    /// Bytes waiting, shared with [`SessionEvents`].
    waiting: Arc<EventBytes>,
    /// The application dropped its events: what frames carry is discarded.
    gone: bool,
}

impl EventSender {
    /// Whether a frame may be read: the channel has room, or nobody
    /// listens any more.
    fn ready(&mut self) -> bool {
        if !self.gone && self.tx.is_closed() {
            self.gone = true;
        }
        // One slot stays free for the final `Closed`.
        self.gone || self.tx.capacity() > 1
    }

    /// Whether the application has taken every event and asked for more
    /// (or is gone).
    fn app_idle(&self) -> bool {
        self.gone || self.waiting.idle.load(Ordering::Acquire)
    }

    /// A future that completes when the channel has room again (false:
    /// nobody listens any more).
    fn room(&self) -> Pin<Box<dyn Future<Output = bool> + Send>> {
        let tx = self.tx.clone();
        Box::pin(async move { tx.reserve_many(2).await.is_ok() })
    }

    /// Delivers `event` into the room seen before reading (or discards it
    /// when the application is gone).
    fn deliver(&mut self, event: Event) {
        if self.gone {
            return;
        }
        let len = match &event {
            Event::Message(m) => m.len(),
            _ => 0,
        };
        // Counted before it can be taken.
        self.waiting.bytes.fetch_add(len, Ordering::AcqRel);
        self.waiting.idle.store(false, Ordering::Release);
        match self.tx.try_send(event) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.waiting.bytes.fetch_sub(len, Ordering::AcqRel);
                self.gone = true;
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                unreachable!("an event is delivered only into room seen before reading")
            }
        }
    }
}

/// Builds the application's event channel.
fn event_channel() -> (EventSender, SessionEvents) {
    let (tx, rx) = mpsc::channel(EVENTS_CAPACITY);
    let waiting = Arc::new(EventBytes::default());
    (
        EventSender {
            tx,
            waiting: waiting.clone(),
            gone: false,
        },
        SessionEvents(rx, waiting),
    )
}

/// Completes when `shutdown` turns true; never, if its sender is gone.
async fn shutting_down(mut shutdown: watch::Receiver<bool>) {
    if shutdown.wait_for(|down| *down).await.is_err() {
        std::future::pending::<()>().await;
    }
}

fn check_version(version: u32) -> Result<(), Exit> {
    if version == protocol::VERSION {
        Ok(())
    } else {
        Err(Exit::Local(
            close::CLIENT_ERROR,
            format!(
                "unsupported protocol version {version}; this endpoint speaks version {}",
                protocol::VERSION
            ),
        ))
    }
}

fn lost(why: &str) -> CloseInfo {
    CloseInfo {
        code: 1006,
        reason: why.to_string(),
        by_peer: true,
    }
}

fn malformed_text(e: &FrameError) -> String {
    format!("malformed frame: {e}")
}

/// WebSocket close reasons are limited to 123 bytes; cut at a char boundary.
fn close_reason(reason: &str) -> String {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_string()
}

impl<S> Drop for Driver<S> {
    /// However the task ends (even cut by a runtime shutdown), the handles'
    /// commands are refused from then on and those waiting are dropped.
    fn drop(&mut self) {
        self.tally.flush(&self.config.metrics);
        self.inbox.close();
        // An aborted or panicked task skipped the close sequence: sender
        // tasks must not wait for room in a queue nobody drains, readers
        // must learn the stream ended, the gauge must come down.
        self.queue.close();
        self.tx.close();
        if std::mem::take(&mut self.counted) {
            self.config
                .metrics
                .sessions_open
                .fetch_sub(1, Ordering::Relaxed);
        }
    }
}
