//! The task that owns one connection: handshake, ACKs, heartbeat, the
//! pipeline, and the close sequence.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};

use super::ack::AckTracker;
use super::queue::{Backpressure, Class, Item, Pushed, Queue};
use super::transaction::{Transactions, TxEffect};
use super::{
    CloseInfo, Command, DeliveryError, EventBytes, Session, SessionEvent, SessionEvents, Stats,
};
use crate::extension::{Hook, Message, Pipeline, Verdict};
use crate::metrics::{Metrics, Tolerated};
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

/// How many malformed frames a session may send before it is closed: each
/// is answered with an ERROR frame, but a peer that only sends garbage is
/// cut off rather than answered forever.
const MAX_MALFORMED: u32 = 64;

/// How long to wait for the peer's close reply after we closed.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// Capacity of the application's event channel; a full channel slows the
/// session's reading, which is the backpressure a slow application exerts.
const EVENTS_CAPACITY: usize = 256;

type Stream<S> = SplitStream<WebSocketStream<S>>;

/// One connection's state, owned by its task.
pub(crate) struct Driver<S> {
    /// Incoming WebSocket messages.
    stream: Stream<S>,
    /// Outgoing frames, drained by the writer task.
    queue: Arc<Queue>,
    /// The writer task; its end means the connection can no longer send.
    writer: JoinHandle<()>,
    /// Bytes written by the writer task.
    bytes_tx: Arc<AtomicU64>,
    /// Bytes of frames received.
    bytes_rx: u64,
    /// This session's id; stamped on every outgoing frame.
    sid: u64,
    /// Server or client end.
    role: Role,
    /// Settings.
    config: SessionConfig,
    /// Extensions applied to every message.
    pipeline: Pipeline,
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
}

/// What ended the main loop.
enum Exit {
    /// The peer is gone or closed; nothing more to send.
    Peer(CloseInfo),
    /// We decided to close: say BYE and close with this code.
    Local(u16, String),
}

impl<S> Driver<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    /// Takes over an upgraded WebSocket and starts its writer.
    pub(crate) fn new(
        ws: WebSocketStream<S>,
        sid: u64,
        role: Role,
        config: SessionConfig,
        pipeline: Pipeline,
    ) -> Driver<S> {
        let (sink, stream) = ws.split();
        let lenient = !config.strict;
        let (tx_limits, metrics) = (config.tx_limits.clone(), config.metrics.clone());
        let queue = Arc::new(Queue::new(config.backpressure));
        let bytes_tx = Arc::new(AtomicU64::new(0));
        let writer = tokio::spawn(write_loop(
            sink,
            queue.clone(),
            bytes_tx.clone(),
            config.metrics.clone(),
        ));
        Driver {
            stream,
            queue: queue.clone(),
            writer,
            bytes_tx,
            bytes_rx: 0,
            sid,
            role,
            config,
            pipeline,
            acks: AckTracker::new(),
            malformed: 0,
            tx: Transactions::new(
                sid,
                queue,
                role == Role::Server,
                lenient,
                tx_limits,
                metrics,
            ),
            info_ack: None,
            info_acked: false,
            implicit: false,
            pending: None,
            logged: 0,
        }
    }

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
        let frame = Frame::new(self.sid, body);
        let item = Item::Frame {
            ack: frame.body.ack(),
            ty: frame.body.frame_type(),
            bytes: frame.encode(),
            class,
        };
        // Only data frames are ever dropped, and they all carry an ack id.
        let dropped = match self.queue.push(item) {
            Pushed::Queued(evicted) => evicted,
            Pushed::Dropped(id) => id.into_iter().collect(),
            Pushed::Closed => Vec::new(),
        };
        if !dropped.is_empty() {
            let policy = self.queue.limits().drop_policy;
            self.config
                .metrics
                .queue_dropped(policy, dropped.len() as u64);
        }
        for id in dropped {
            self.acks.forget(id, DeliveryError::DroppedByQueue);
        }
    }

    /// Sends an ACK-tracked protocol frame; returns its ack id.
    fn push_tracked(&mut self, mut body: Body) -> u32 {
        let id = self.acks.track(Instant::now().into_std(), None);
        body.set_ack(id);
        self.push(body, Class::Control);
        id
    }

    fn on_ack(&mut self, id: u32) {
        if self.info_ack == Some(id) {
            self.info_ack = None;
            self.info_acked = true;
        }
        if let Some(rtt) = self.acks.ack(id, Instant::now().into_std()) {
            self.config.metrics.ack_rtt.observe(rtt);
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

    /// Reads the next CAMP frame. Malformed input is answered here and
    /// reading goes on; the end of the connection is an `Err(Exit)`.
    async fn next_frame(&mut self) -> Result<Frame, Exit> {
        loop {
            let msg = match self.stream.next().await {
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
            match msg {
                WsMessage::Binary(bytes) => {
                    let len = bytes.len();
                    self.bytes_rx += len as u64;
                    match Frame::decode(bytes) {
                        Ok(frame) if frame.sid != self.sid && self.config.strict => {
                            let why =
                                format!("frame for session {} on session {}", frame.sid, self.sid);
                            if let Some(exit) = self.malformed(why) {
                                return Err(exit);
                            }
                        }
                        Ok(frame) => {
                            if frame.sid != self.sid {
                                let what = format!(
                                    "frames carry sid {} on the session {} of this connection",
                                    frame.sid, self.sid
                                );
                                self.tolerate(Tolerated::ForeignSid, &what);
                            }
                            self.config.metrics.frame_in(frame.body.frame_type(), len);
                            return Ok(frame);
                        }
                        Err(e) => {
                            if let Some(exit) = self.malformed(malformed_text(&e)) {
                                return Err(exit);
                            }
                        }
                    }
                }
                WsMessage::Text(_) => {
                    let why = "text WebSocket messages are not CAMP frames; send binary".into();
                    if let Some(exit) = self.malformed(why) {
                        return Err(exit);
                    }
                }
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
                WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_) => {}
            }
        }
    }

    /// Runs the CAMP handshake; returns the peer's feature flags.
    async fn handshake_inner(&mut self) -> Result<u64, Exit> {
        if self.role == Role::Server {
            let info = self.endpoint_info();
            self.info_ack = Some(self.push_tracked(info));
        }
        loop {
            // A peer that floods the handshake with PINGs and does not
            // read our PONGs: stop reading until it does (the handshake
            // timeout ends it otherwise).
            if self.queue.congested() {
                self.queue.drained().await;
            }
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
    /// connection is closed and the reason returned.
    /// A shutdown during the handshake closes gracefully at once rather
    /// than waiting for the peer.
    pub(crate) async fn handshake(
        &mut self,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<u64, CloseInfo> {
        let timeout = self.config.handshake_timeout;
        let exit = tokio::select! {
            done = tokio::time::timeout(timeout, self.handshake_inner()) => match done {
                Ok(Ok(features)) => return Ok(features),
                Ok(Err(exit)) => exit,
                Err(_) => Exit::Local(
                    close::CLIENT_ERROR,
                    format!("handshake not completed within {timeout:?}"),
                ),
            },
            _ = shutting_down(&mut shutdown) => {
                Exit::Local(close::GRACEFUL, "server shutting down".into())
            }
        };
        Err(self.finish(exit).await)
    }

    /// Runs the session until it ends. `shutdown` turning true closes it
    /// gracefully.
    pub(crate) async fn run(
        mut self,
        session: Session,
        mut commands: mpsc::UnboundedReceiver<Command>,
        events: EventSender,
        mut shutdown: watch::Receiver<bool>,
    ) -> CloseInfo {
        self.pipeline.session_opened(&session).await;
        session.attach_queue(self.queue.clone());
        self.tx.attach(session.command_sender());
        // Above the receive budget (chunks buffered for slow stream
        // readers) the socket is not read until readers catch up; commands
        // are still served meanwhile.
        let rx_budget = self.tx.budget();
        let keep_alive = self.config.keep_alive;
        let mut heartbeat = tokio::time::interval_at(Instant::now() + keep_alive, keep_alive);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut heard_since_tick = true;
        let expiry = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(expiry);
        let queue = self.queue.clone();
        // A frame is read only with a slot reserved in the application's
        // event channel: while the application is behind, the session
        // stops reading (backpressure on the peer) but keeps serving
        // commands, timers and shutdown; it never blocks inside a frame.
        let mut slot = Slot {
            permit: None,
            gone: false,
            waiting: events.waiting.clone(),
        };
        slot.fill(&events.tx);
        let mut pending = match self.pending.take() {
            Some(frame) => self.on_frame(frame, &session, &mut slot).await,
            None => None,
        };
        let exit = loop {
            if let Some(exit) = pending.take() {
                break exit;
            }
            slot.fill(&events.tx);
            let deadline = self.acks.next_deadline();
            if let Some(d) = deadline
                && expiry.deadline() != Instant::from_std(d)
            {
                expiry.as_mut().reset(Instant::from_std(d));
            }
            // Not reading while our readers are behind (stream chunks
            // buffered) or the peer is not reading what we send.
            let congested = queue.congested();
            let readers_behind = rx_budget.exhausted();
            // The application has not taken this many bytes of messages:
            // the per-session cap holds for what we deliver too.
            let app_behind = events.waiting.bytes.load(Ordering::Acquire)
                >= self.queue.limits().max_queued_bytes;
            let rx_paused = readers_behind || congested || app_behind;
            tokio::select! {
                _ = events.waiting.taken.notified(), if app_behind => {}
                _ = queue.drained(), if congested => {}
                reserved = events.tx.clone().reserve_owned(), if slot.empty() && !rx_paused => {
                    slot.permit = reserved.ok();
                }
                frame = self.next_frame(), if slot.ready() && !rx_paused => {
                    heard_since_tick = true;
                    match frame {
                        Ok(frame) => {
                            if let Some(exit) = self.on_frame(frame, &session, &mut slot).await {
                                break exit;
                            }
                        }
                        Err(exit) => break exit,
                    }
                }
                Some(command) = commands.recv() => match command {
                    Command::Send(message, tx) => self.send_message(message, tx, &session).await,
                    Command::ExtensionSend(message) => {
                        session.set_extension_send(true);
                        self.send_message(message, None, &session).await;
                        session.set_extension_send(false);
                    }
                    Command::Ping => self.push(Body::Ping(PingPong::Ping), Class::Control),
                    Command::Close(code, reason) => break Exit::Local(code, reason),
                    Command::Tx(command) => {
                        self.tx.on_command(&mut self.acks, command, session.peer_features());
                    }
                },
                _ = rx_budget.room(), if readers_behind => {}
                _ = heartbeat.tick() => {
                    // While our side holds reading up (stream readers or the
                    // application behind), the peer's silence is ours: do
                    // not count it against it. A peer that does not read
                    // what we send (our queue at its caps) gets no such
                    // grace.
                    if !heard_since_tick
                        && self.role == Role::Server
                        && !readers_behind
                        && !app_behind
                        && slot.ready()
                    {
                        break Exit::Local(
                            close::CLIENT_ERROR,
                            format!("heartbeat timeout: nothing received for {keep_alive:?}"),
                        );
                    }
                    heard_since_tick = false;
                    let now = Instant::now().into_std();
                    self.tx.expire_idle(&mut self.acks, now, !rx_paused);
                    if self.role == Role::Server {
                        self.push(Body::Ping(PingPong::Ping), Class::Control);
                    }
                    let stats = self.stats();
                    session.set_stats(stats);
                    let _ = events.tx.try_send(SessionEvent::Stats(stats));
                }
                _ = &mut expiry, if deadline.is_some() => {
                    let expired = self.acks.expire(Instant::now().into_std());
                    self.config.metrics.ack_timeouts.fetch_add(expired, Ordering::Relaxed);
                }
                _ = shutting_down(&mut shutdown) => {
                    break Exit::Local(close::GRACEFUL, "server shutting down".into());
                }
                _ = queue.closed() => {
                    break Exit::Peer(lost("connection lost while writing"));
                }
            }
        };
        self.tx.close();
        let info = self.finish(exit).await;
        session.set_stats(self.stats());
        session.mark_closed();
        self.pipeline.session_closed(&session).await;
        let _ = events.tx.send(SessionEvent::Closed(info.clone())).await;
        info
    }

    fn stats(&self) -> Stats {
        Stats {
            rtt_ms: self.acks.srtt_ms(),
            bytes_rx: self.bytes_rx,
            bytes_tx: self.bytes_tx.load(Ordering::Relaxed),
            ack_timeouts: self.acks.timeouts(),
            queue_drops: self.queue.drops(),
        }
    }

    /// Runs an outgoing message through the pipeline and queues it.
    async fn send_message(
        &mut self,
        mut message: Message,
        tx: Option<super::DeliveryTx>,
        session: &Session,
    ) {
        let fail = |tx: Option<super::DeliveryTx>, e| {
            if let Some(tx) = tx {
                let _ = tx.send(Err(e));
            }
        };
        let hook = Hook::for_message(&message, true);
        if self.pipeline.run(hook, session, &mut message).await == Verdict::Drop {
            return fail(tx, DeliveryError::DroppedByExtension);
        }
        if message.len() > protocol::MAX_PAYLOAD {
            return fail(tx, DeliveryError::TooLarge);
        }
        let ack = self.acks.track(Instant::now().into_std(), tx);
        let body = match message {
            Message::Utf8(text) => Body::Utf8 { ack, text },
            Message::Binary(data) => Body::Binary {
                ack,
                data: Bytes::from(data),
            },
            Message::Error(message) => Body::Error { ack, message },
        };
        self.push(body, Class::Data);
    }

    /// Handles one frame after the handshake. Returns how the session ends,
    /// if this frame ends it.
    async fn on_frame(&mut self, frame: Frame, session: &Session, slot: &mut Slot) -> Option<Exit> {
        let ty = frame.body.frame_type();
        if ty.is_transaction()
            && self.implicit
            && session.peer_features() & protocol::FEATURE_TRANSACTIONS == 0
        {
            // An implicit handshake announced nothing: the peer's streams
            // show it speaks transactions.
            session.set_peer_features(session.peer_features() | protocol::FEATURE_TRANSACTIONS);
        }
        if ty.is_transaction() && session.peer_features() & protocol::FEATURE_TRANSACTIONS == 0 {
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
                session.set_peer_features(features);
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
            Body::Binary { data, .. } => Message::Binary(data.to_vec()),
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
                        if let Some(stream) = session.offer_stream(stream) {
                            slot.send(SessionEvent::Stream(stream));
                        }
                    }
                    None => {}
                }
                return None;
            }
        };
        let mut message = message;
        let hook = Hook::for_message(&message, false);
        if self.pipeline.run(hook, session, &mut message).await == Verdict::Pass {
            slot.send(SessionEvent::Message(message));
        }
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
        self.queue.close();
        // The close frame had its chance during the linger: a writer still
        // blocked on a peer that does not read is stopped, so the socket
        // and what is queued behind it are freed now.
        self.writer.abort();
        self.acks.close();
        info
    }

    /// Reads until the peer's close reply or [`CLOSE_LINGER`], discarding.
    async fn linger(&mut self) {
        let drain = async {
            while let Some(Ok(msg)) = self.stream.next().await {
                if let WsMessage::Close(_) = msg {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(CLOSE_LINGER, drain).await;
        // Give the writer a moment to put the close frame on the wire.
        let _ = tokio::time::timeout(Duration::from_millis(200), &mut self.writer).await;
    }
}

/// A reserved place in the application's event channel, taken before a
/// frame is read so that delivering what the frame carries never waits.
struct Slot {
    /// The reservation, if one is held.
    permit: Option<mpsc::OwnedPermit<SessionEvent>>,
    /// The application dropped its events: what frames carry is discarded.
    gone: bool,
    /// Message bytes the application has not taken.
    waiting: Arc<EventBytes>,
}

impl Slot {
    /// Reserves at once if the channel has room (the usual case: no
    /// await, so no cooperative-budget yield).
    fn fill(&mut self, events: &mpsc::Sender<SessionEvent>) {
        if self.permit.is_none() && !self.gone {
            match events.clone().try_reserve_owned() {
                Ok(permit) => self.permit = Some(permit),
                Err(mpsc::error::TrySendError::Closed(_)) => self.gone = true,
                Err(mpsc::error::TrySendError::Full(_)) => {}
            }
        }
    }

    /// Whether a reservation must be awaited before reading.
    fn empty(&self) -> bool {
        self.permit.is_none() && !self.gone
    }

    /// Whether a frame may be read.
    fn ready(&self) -> bool {
        !self.empty()
    }

    /// Delivers `event` into the reservation (or discards it when the
    /// application is gone).
    fn send(&mut self, event: SessionEvent) {
        if let Some(permit) = self.permit.take() {
            if let SessionEvent::Message(m) = &event {
                self.waiting.bytes.fetch_add(m.len(), Ordering::AcqRel);
            }
            permit.send(event);
        }
    }
}

/// The session's end of the application's event channel, with the count
/// of message bytes the application has not taken yet.
pub(crate) struct EventSender {
    /// The channel.
    tx: mpsc::Sender<SessionEvent>,
    /// Bytes waiting, shared with [`SessionEvents`].
    waiting: Arc<EventBytes>,
}

/// Builds the application's event channel.
pub(crate) fn event_channel() -> (EventSender, SessionEvents) {
    let (tx, rx) = mpsc::channel(EVENTS_CAPACITY);
    let waiting = Arc::new(EventBytes::default());
    (
        EventSender {
            tx,
            waiting: waiting.clone(),
        },
        SessionEvents(rx, waiting),
    )
}

/// Completes when `shutdown` turns true; never, if its sender is gone.
async fn shutting_down(shutdown: &mut watch::Receiver<bool>) {
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

/// Drains the queue into the socket until the queue closes or the socket
/// fails.
async fn write_loop<S>(
    mut sink: SplitSink<WebSocketStream<S>, WsMessage>,
    queue: Arc<Queue>,
    bytes_tx: Arc<AtomicU64>,
    metrics: Arc<Metrics>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let high_water = queue.limits().high_water_mark;
    let mut batch = Vec::new();
    let result: Result<(), WsError> = async {
        while queue.pop_batch(&mut batch).await {
            let mut unflushed = 0;
            for item in batch.drain(..) {
                match item {
                    Item::Frame { bytes, ty, .. } => {
                        let len = bytes.len();
                        sink.feed(WsMessage::Binary(bytes)).await?;
                        bytes_tx.fetch_add(len as u64, Ordering::Relaxed);
                        metrics.frame_out(ty, len);
                        unflushed += len;
                        if unflushed >= high_water {
                            sink.flush().await?;
                            unflushed = 0;
                        }
                    }
                    Item::Close { code, reason } => {
                        let frame = CloseFrame {
                            code: CloseCode::from(code),
                            reason: close_reason(&reason).into(),
                        };
                        sink.send(WsMessage::Close(Some(frame))).await?;
                        return Ok(());
                    }
                }
            }
            sink.flush().await?;
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        tracing::debug!("writer stopped: {e}");
    }
    queue.close();
}
