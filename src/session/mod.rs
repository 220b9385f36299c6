//! Sessions: one task per connection, and the handle the application uses.
//!
//! A [`Session`] is a cheap, cloneable handle. Its methods never block: a
//! send is queued to the session's task, which runs it through the outbound
//! extension pipeline, gives it an ack id and queues it for the socket; the
//! returned [`Delivery`] can be awaited until the peer acknowledged it.
//! Everything that happens on the session reaches the application as a
//! [`SessionEvent`] on its [`SessionEvents`] stream.
//!
//! Streams (CAMP.Transaction) go out with [`Session::stream`] and come in
//! as [`IncomingStream`]s; see the [`transaction`] module.
//!
//! Every UTF-8, binary and error message passes a [`Filter`] on its way in
//! and out; the session defines that seam and the extension pipeline
//! implements it.

mod ack;
mod driver;
mod filter;
mod queue;
pub mod transaction;

pub use filter::{Direction, Filter, FilterFuture, Message, NoFilter, Verdict};

pub use ack::{ACK_TIMEOUT, MAX_PENDING_ACKS};
pub use queue::{Backpressure, DropPolicy, QueueStats};
pub use transaction::{
    IncomingStream, StreamOptions, StreamRange, Transfer, TransferError, WaitError,
};

pub(crate) use driver::{Driver, Role, SessionConfig, Setup, open};

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncSeek};
use tokio::sync::{mpsc, oneshot};

use crate::protocol::close;

/// Why a message was not delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// An extension dropped the message before it was sent.
    #[error("dropped by an extension")]
    DroppedByExtension,
    /// The outgoing queue was full and the drop policy discarded it.
    #[error("dropped by the backpressure policy")]
    DroppedByQueue,
    /// The payload is larger than the protocol allows (1 MiB).
    #[error("payload exceeds the 1 MiB limit")]
    TooLarge,
    /// No ACK arrived within the ack timeout (2.5 s).
    #[error("not acknowledged within 2.5 s")]
    Timeout,
    /// The session closed before the peer acknowledged it.
    #[error("session closed")]
    Closed,
}

pub(crate) type DeliveryTx = oneshot::Sender<Result<Duration, DeliveryError>>;

/// The fate of one sent message. Dropping it is fine (fire and forget);
/// awaiting [`Delivery::acked`] waits for the peer's ACK.
#[derive(Debug)]
pub struct Delivery(oneshot::Receiver<Result<Duration, DeliveryError>>);

impl Delivery {
    /// Waits until the peer acknowledged the message; returns the round trip.
    pub async fn acked(self) -> Result<Duration, DeliveryError> {
        self.0.await.unwrap_or(Err(DeliveryError::Closed))
    }
}

/// Statistics of a session, reported on every heartbeat tick.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Stats {
    /// Smoothed ack round-trip time in milliseconds (EWMA, alpha 0.2);
    /// `None` before the first ACK.
    pub rtt_ms: Option<f64>,
    /// Bytes of CAMP frames received.
    pub bytes_rx: u64,
    /// Bytes of CAMP frames sent.
    pub bytes_tx: u64,
    /// ACK-tracked frames never acknowledged within 2.5 s.
    pub ack_timeouts: u64,
    /// Data frames dropped by the backpressure policy.
    pub queue_drops: u64,
}

/// Who ended a session, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseInfo {
    /// The WebSocket close code (4000 graceful, 4001 client error, 4002
    /// server error, 1006 when the connection just vanished).
    pub code: u16,
    /// The reason sent with the close or BYE.
    pub reason: String,
    /// Whether the peer closed (true) or this side did (false).
    pub by_peer: bool,
}

/// Something that happened on a session.
#[derive(Debug)]
pub enum SessionEvent {
    /// A message from the peer, after the inbound extension pipeline.
    Message(Message),
    /// The statistics, once per heartbeat interval.
    Stats(Stats),
    /// The peer announced a stream that no
    /// [`Session::wait_for_stream`] was waiting for. Dropping it cancels it.
    Stream(IncomingStream),
    /// The session ended; no event follows.
    Closed(CloseInfo),
}

/// Bytes of messages delivered to the application's event channel and not
/// yet taken: the session stops reading from the peer above its
/// `max_queued_bytes` (the per-session cap, both ways).
#[derive(Debug, Default)]
pub(crate) struct EventBytes {
    /// Payload bytes waiting.
    pub(crate) bytes: AtomicUsize,
    /// Signalled when the application took a message.
    pub(crate) taken: tokio::sync::Notify,
    /// The application asked for its next event and none was waiting: it
    /// has taken everything delivered so far and given whatever answers it
    /// gives at once (the session task flushes its ACKs together with
    /// those; see `driver::poll_wake`). A hint for batching only: a stale
    /// value costs one write more or one poll more, never a frame.
    pub(crate) idle: std::sync::atomic::AtomicBool,
}

/// A [`SessionEvent`] as it travels on the event channel: the rare
/// variants boxed, so a slot is the size of a message (40 bytes; an
/// [`IncomingStream`] is 144). Tokio's channels allocate their slots 32 at
/// a time, up front, so the slot size is paid by every session, idle or
/// not.
#[derive(Debug)]
pub(crate) enum Event {
    Message(Message),
    Stats(Box<Stats>),
    Stream(Box<IncomingStream>),
    Closed(Box<CloseInfo>),
}

/// The stream of a session's events.
#[derive(Debug)]
pub struct SessionEvents(pub(crate) mpsc::Receiver<Event>, pub(crate) Arc<EventBytes>);

impl SessionEvents {
    /// The next event; `None` after [`SessionEvent::Closed`].
    pub async fn next(&mut self) -> Option<SessionEvent> {
        let event = match self.0.try_recv() {
            Ok(event) => event,
            Err(mpsc::error::TryRecvError::Empty) => {
                self.1.idle.store(true, Ordering::Release);
                self.0.recv().await?
            }
            Err(mpsc::error::TryRecvError::Disconnected) => return None,
        };
        Some(match event {
            Event::Message(m) => {
                self.1.bytes.fetch_sub(m.len(), Ordering::AcqRel);
                self.1.taken.notify_one();
                SessionEvent::Message(m)
            }
            Event::Stats(stats) => SessionEvent::Stats(*stats),
            Event::Stream(stream) => SessionEvent::Stream(*stream),
            Event::Closed(info) => SessionEvent::Closed(*info),
        })
    }

    /// The next message, skipping statistics and cancelling streams;
    /// `None` once the session closed.
    pub async fn next_message(&mut self) -> Option<Message> {
        loop {
            match self.next().await? {
                SessionEvent::Message(m) => return Some(m),
                SessionEvent::Stats(_) | SessionEvent::Stream(_) => {}
                SessionEvent::Closed(_) => return None,
            }
        }
    }

    /// Waits for the end of the session and says how it ended, discarding
    /// anything before.
    pub async fn closed(&mut self) -> Option<CloseInfo> {
        loop {
            if let SessionEvent::Closed(info) = self.next().await? {
                return Some(info);
            }
        }
    }
}

/// A request from a handle to the session's task.
#[derive(Debug)]
pub(crate) enum Command {
    /// Send a message through the outbound pipeline; tell the sender how
    /// it went if someone waits to know.
    Send(Message, Option<DeliveryTx>),
    /// Send a message an extension sent from a hook: through the outbound
    /// pipeline, whose hooks may then not send in turn (no chains).
    ExtensionSend(Message),
    /// Send a CAMP PING.
    Ping,
    /// Say BYE and close with this code.
    Close(u16, String),
    /// Transactions: start a stream, fetch, cancel, and sender-task
    /// bookkeeping.
    Tx(transaction::TxCommand),
}

/// Commands on their way from the handles to the session's task: a queue
/// under a lock and the task's waker. A tokio channel would do the same
/// but allocates 32 slots per session up front (2.8 KiB of every idle
/// session); this queue allocates on first use and keeps what it grew to.
#[derive(Default)]
pub(crate) struct Inbox {
    state: Mutex<InboxState>,
    /// The session's task, woken by each command.
    waker: futures_util::task::AtomicWaker,
    /// Whether commands wait (kept under the lock): the task's turns look
    /// here before taking the lock.
    filled: AtomicBool,
}

#[derive(Default)]
struct InboxState {
    queue: VecDeque<Command>,
    /// The task ended: commands are refused.
    closed: bool,
}

impl std::fmt::Debug for Inbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.lock();
        f.debug_struct("Inbox")
            .field("waiting", &s.queue.len())
            .field("closed", &s.closed)
            .finish()
    }
}

impl Inbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, InboxState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next command, or `Pending` with the task registered for the
    /// next one.
    pub(crate) fn poll_recv(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Command> {
        if let Some(command) = self.try_recv() {
            return std::task::Poll::Ready(command);
        }
        self.waker.register(cx.waker());
        match self.try_recv() {
            Some(command) => std::task::Poll::Ready(command),
            None => std::task::Poll::Pending,
        }
    }

    /// The next command, if one waits.
    pub(crate) fn try_recv(&self) -> Option<Command> {
        if !self.filled.load(Ordering::Acquire) {
            return None;
        }
        let mut s = self.lock();
        let command = s.queue.pop_front();
        self.filled.store(!s.queue.is_empty(), Ordering::Release);
        command
    }

    /// Refuses commands from now on; those waiting are dropped (their
    /// deliveries and transfers fail with `Closed`).
    pub(crate) fn close(&self) {
        let waiting = {
            let mut s = self.lock();
            s.closed = true;
            std::mem::take(&mut s.queue)
        };
        drop(waiting);
    }
}

/// Sends commands to a session's task; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct CommandSender(Arc<Inbox>);

impl CommandSender {
    /// Queues `command`; gives it back if the session's task ended.
    pub(crate) fn send(&self, command: Command) -> Result<(), mpsc::error::SendError<Command>> {
        {
            let mut s = self.0.lock();
            if s.closed {
                return Err(mpsc::error::SendError(command));
            }
            s.queue.push_back(command);
            self.0.filled.store(true, Ordering::Release);
        }
        self.0.waker.wake();
        Ok(())
    }
}

/// What a [`Session::detached`] session was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outgoing {
    /// Send this message.
    Message(Message),
    /// Send a CAMP PING.
    Ping,
    /// Close with this code and reason.
    Close {
        /// The close code.
        code: u16,
        /// The reason.
        reason: String,
    },
}

/// The receiving end of a [`Session::detached`] session.
#[derive(Debug)]
pub struct Outbox(Arc<Inbox>);

impl Outbox {
    /// The next request, if one is waiting.
    pub fn try_recv(&mut self) -> Option<Outgoing> {
        loop {
            return Some(match self.0.try_recv()? {
                Command::Send(m, _) | Command::ExtensionSend(m) => Outgoing::Message(m),
                Command::Ping => Outgoing::Ping,
                Command::Close(code, reason) => Outgoing::Close { code, reason },
                // A detached session has no peer to stream to; dropping the
                // request fails its transfer with `Closed`.
                Command::Tx(_) => continue,
            });
        }
    }
}

/// State shared by the handles and the session's task.
#[derive(Debug)]
struct Shared {
    /// The session id chosen by the client.
    id: u64,
    /// The peer's address, when the session runs over a socket.
    remote: Option<SocketAddr>,
    /// The peer's announced feature flags.
    peer_features: AtomicU64,
    /// The per-session key/value store (the reference's `Set`/`Get`); also
    /// where plugins keep per-session state across hot reloads.
    store: Mutex<HashMap<String, String>>,
    /// Requests to the session's task.
    commands: CommandSender,
    /// Set once the session ended.
    closed: AtomicBool,
    /// Set while the session's task runs a message an extension sent
    /// through the outbound pipeline.
    extension_send: AtomicBool,
    /// Latest statistics, updated by the task.
    stats: Mutex<Stats>,
    /// The outgoing queue (for [`Session::queue_stats`]).
    queue: Arc<queue::Queue>,
    /// [`Session::wait_for_stream`] callers, by stream name.
    stream_waiters: Mutex<transaction::Waiters>,
}

/// A handle to a session. Cheap to clone; every clone is the same session.
#[derive(Debug, Clone)]
pub struct Session {
    shared: Arc<Shared>,
}

impl PartialEq for Session {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }
}

impl Session {
    /// A session with its outgoing queue and command channel, whole before
    /// its task runs.
    pub(crate) fn new(
        id: u64,
        remote: Option<SocketAddr>,
        queue: Arc<queue::Queue>,
    ) -> (Session, Arc<Inbox>) {
        let inbox = Arc::new(Inbox::default());
        let shared = Shared {
            id,
            remote,
            peer_features: AtomicU64::new(0),
            store: Mutex::default(),
            commands: CommandSender(inbox.clone()),
            closed: AtomicBool::new(false),
            extension_send: AtomicBool::new(false),
            stats: Mutex::default(),
            queue,
            stream_waiters: Mutex::default(),
        };
        (
            Session {
                shared: Arc::new(shared),
            },
            inbox,
        )
    }

    /// A session with no connection: what it is asked to send or close
    /// shows up in the [`Outbox`]. For testing extensions.
    pub fn detached(id: u64) -> (Session, Outbox) {
        let queue = Arc::new(queue::Queue::new(Backpressure::default()));
        let (session, rx) = Session::new(id, None, queue);
        (session, Outbox(rx))
    }

    /// The session id (`x-camp-sid`).
    pub fn id(&self) -> u64 {
        self.shared.id
    }

    /// The peer's address.
    pub fn remote_addr(&self) -> Option<SocketAddr> {
        self.shared.remote
    }

    /// The feature flags the peer announced in its ENDPOINT_INFO.
    pub fn peer_features(&self) -> u64 {
        self.shared.peer_features.load(Ordering::Relaxed)
    }

    pub(crate) fn set_peer_features(&self, flags: u64) {
        self.shared.peer_features.store(flags, Ordering::Relaxed);
    }

    /// The value stored under `key`.
    pub fn get(&self, key: &str) -> Option<String> {
        self.store().get(key).cloned()
    }

    /// Stores `value` under `key` for the lifetime of the session.
    pub fn set(&self, key: impl Into<String>, value: impl Into<String>) {
        self.store().insert(key.into(), value.into());
    }

    /// Stores `value` under `key` unless the store would then hold more
    /// than `max_keys` keys or `max_bytes` bytes of keys and values; the
    /// error says which bound (the extension host's bound on what plugins
    /// may keep per session).
    pub(crate) fn set_within(
        &self,
        key: String,
        value: String,
        max_keys: usize,
        max_bytes: usize,
    ) -> Result<(), String> {
        let mut store = self.store();
        let replaced = store.get(&key).map(|old| key.len() + old.len());
        let keys = store.len() + usize::from(replaced.is_none());
        let bytes: usize = store.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
            - replaced.unwrap_or(0)
            + key.len()
            + value.len();
        if keys > max_keys {
            return Err(format!(
                "session store of session {} would hold {keys} keys, over session_store_keys = {max_keys}",
                self.id()
            ));
        }
        if bytes > max_bytes {
            return Err(format!(
                "session store of session {} would hold {bytes} bytes, over session_store_bytes = {max_bytes}",
                self.id()
            ));
        }
        store.insert(key, value);
        Ok(())
    }

    /// Removes and returns the value under `key`.
    pub fn remove(&self, key: &str) -> Option<String> {
        self.store().remove(key)
    }

    fn store(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.shared.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends a message of any kind (through the outbound extension
    /// pipeline) and returns its [`Delivery`], to be awaited for the ACK.
    /// A sender that will not wait uses [`Session::post`], which costs no
    /// receipt.
    pub fn send_message(&self, message: Message) -> Delivery {
        let (tx, rx) = oneshot::channel();
        if let Err(mpsc::error::SendError(Command::Send(_, Some(tx)))) =
            self.shared.commands.send(Command::Send(message, Some(tx)))
        {
            let _ = tx.send(Err(DeliveryError::Closed));
        }
        Delivery(rx)
    }

    /// Sends a message (through the outbound extension pipeline) without a
    /// receipt: fire and forget. Its fate still shows in the session's
    /// statistics and the metrics (ack timeouts, queue drops).
    pub fn post(&self, message: Message) {
        let _ = self.shared.commands.send(Command::Send(message, None));
    }

    /// Sends a UTF-8 message (through the outbound extension pipeline).
    pub fn send_utf8(&self, text: impl Into<String>) -> Delivery {
        self.send_message(Message::Utf8(text.into()))
    }

    /// Sends a binary message (through the outbound extension pipeline).
    pub fn send_binary(&self, bytes: impl Into<Bytes>) -> Delivery {
        self.send_message(Message::Binary(bytes.into()))
    }

    /// Sends an ERROR frame (through the outbound extension pipeline).
    pub fn send_error(&self, message: impl Into<String>) -> Delivery {
        self.send_message(Message::Error(message.into()))
    }

    /// Sends a message on behalf of an extension's hook: no delivery
    /// receipt, and the outbound hooks that see it may not send in turn.
    pub(crate) fn send_from_extension(&self, message: Message) {
        let _ = self.shared.commands.send(Command::ExtensionSend(message));
    }

    /// Whether the outbound pipeline is running a message an extension
    /// sent (its hooks may not send: a chain of sends could grow forever).
    pub(crate) fn in_extension_send(&self) -> bool {
        self.shared.extension_send.load(Ordering::Relaxed)
    }

    pub(crate) fn set_extension_send(&self, on: bool) {
        self.shared.extension_send.store(on, Ordering::Relaxed);
    }

    /// Sends a CAMP PING; the peer answers PONG.
    pub fn ping(&self) {
        let _ = self.shared.commands.send(Command::Ping);
    }

    /// Says BYE with `reason`, then closes the connection with 4000.
    pub fn close(&self, reason: impl Into<String>) {
        self.close_with(close::GRACEFUL, reason.into());
    }

    /// Says BYE, then closes with `code` (4000, 4001 or 4002).
    pub(crate) fn close_with(&self, code: u16, reason: impl Into<String>) {
        let _ = self
            .shared
            .commands
            .send(Command::Close(code, reason.into()));
    }

    /// Whether the session has ended.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    pub(crate) fn mark_closed(&self) {
        self.shared.closed.store(true, Ordering::Release);
        self.waiters().clear();
    }

    /// The latest statistics.
    pub fn stats(&self) -> Stats {
        *self.shared.stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn set_stats(&self, stats: Stats) {
        *self.shared.stats.lock().unwrap_or_else(|e| e.into_inner()) = stats;
    }

    /// Sends `reader` as a stream (CAMP.Transaction) and returns the
    /// transfer, which completes once the peer acknowledged its end.
    ///
    /// PUSH reads the source front to back. PULL needs the size up front,
    /// so a plain reader is first spooled to an anonymous temporary file;
    /// use [`Session::stream_seekable`] for files to serve ranges straight
    /// from them.
    pub fn stream(
        &self,
        reader: impl AsyncRead + Send + 'static,
        options: StreamOptions,
    ) -> Transfer {
        self.start_stream(transaction::Source::Reader(Box::pin(reader)), options)
    }

    /// Sends a seekable source (a file) as a stream: PULL reads exactly the
    /// ranges the peer fetches, PUSH reads it from byte 0. The size is the
    /// source's length.
    pub fn stream_seekable(
        &self,
        source: impl AsyncRead + AsyncSeek + Send + 'static,
        options: StreamOptions,
    ) -> Transfer {
        self.start_stream(transaction::Source::Seekable(Box::pin(source)), options)
    }

    /// Sends a stream being received (from this session or another) on as
    /// a stream of its own, e.g. an echo or a forward; `options` says how
    /// it is announced (`stream.options()` keeps the incoming stream's
    /// name, behaviour and size).
    ///
    /// Use it instead of [`Session::stream`] whenever the source is an
    /// [`IncomingStream`] passed on as it is; use `stream` for any other
    /// reader, or to send bytes you transform.
    ///
    /// With PUSH `options`, the received chunks go on without a copy, and
    /// each stays counted in the *receiving* session's buffer budget
    /// (`limits.max_receive_buffer_bytes`, [`TxLimits::max_receive_buffer`](transaction::TxLimits::max_receive_buffer))
    /// until it is queued here. When this session's peer reads slowly, the
    /// budget fills and the receiving session stops reading its socket
    /// (all of it: that peer's messages wait too, see the
    /// [`transaction`] module), so the sending peer is slowed by TCP flow
    /// control instead of the relay buffering its chunks. With `stream`,
    /// every transfer waiting for room holds a chunk of up to 1 MiB
    /// outside any budget (64 transfers per session: SECURITY.md).
    ///
    /// With PULL `options`, the stream is first spooled to an anonymous
    /// temporary file, as `stream` does with a reader: sending starts once
    /// the whole stream has arrived, the file counts against the
    /// server-wide `limits.max_spool_files` and `limits.max_spooled_bytes`
    /// (the transfer fails with [`TransferError::Limit`] beyond them), and
    /// the receiving session is not held back by this session's reader.
    pub fn relay(&self, stream: IncomingStream, options: StreamOptions) -> Transfer {
        self.start_stream(transaction::Source::Incoming(Box::new(stream)), options)
    }

    fn start_stream(&self, source: transaction::Source, options: StreamOptions) -> Transfer {
        let (command, transfer) = transaction::request(source, options);
        // A closed session drops the request, which fails the transfer.
        let _ = self.shared.commands.send(Command::Tx(command));
        transfer
    }

    /// Waits for the peer to announce a stream called `name` (the
    /// reference's `WaitForStream`). Registers at the call, so call it
    /// before the peer may announce; a stream announced while nobody waits
    /// for its name is delivered as [`SessionEvent::Stream`] instead.
    pub fn wait_for_stream(
        &self,
        name: impl Into<String>,
        timeout: Duration,
    ) -> impl std::future::Future<Output = Result<IncomingStream, WaitError>> + Send + 'static {
        let name = name.into();
        let (tx, mut rx) = oneshot::channel();
        let closed = self.is_closed();
        if !closed {
            self.waiters().add(name.clone(), tx);
        }
        let session = self.clone();
        async move {
            if closed {
                return Err(WaitError::Closed);
            }
            match tokio::time::timeout(timeout, &mut rx).await {
                Ok(Ok(stream)) => Ok(stream),
                Ok(Err(_)) => Err(WaitError::Closed),
                Err(_) => {
                    rx.close();
                    // It may have arrived just now.
                    if let Ok(stream) = rx.try_recv() {
                        return Ok(stream);
                    }
                    session.waiters().prune(&name);
                    Err(WaitError::Timeout)
                }
            }
        }
    }

    /// Asks the sender of a PULL stream for `[start, end)` (the reference's
    /// `StreamRequestRange`); see [`IncomingStream::request_range`].
    pub fn request_range(
        &self,
        stream: &IncomingStream,
        start: u64,
        end: u64,
    ) -> std::io::Result<StreamRange> {
        stream.request_range(start, end)
    }

    /// The outgoing queue right now (bytes, frames, peak, drops).
    pub fn queue_stats(&self) -> QueueStats {
        self.shared.queue.stats()
    }

    pub(crate) fn command_sender(&self) -> CommandSender {
        self.shared.commands.clone()
    }

    /// Hands an announced stream to a waiter for its name, or gives it
    /// back.
    pub(crate) fn offer_stream(&self, stream: IncomingStream) -> Option<IncomingStream> {
        self.waiters().offer(stream)
    }

    fn waiters(&self) -> std::sync::MutexGuard<'_, transaction::Waiters> {
        self.shared
            .stream_waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}
