//! CAMP.Transaction: streams in both directions over one session.
//!
//! # Sending
//!
//! [`Session::stream`](super::Session::stream) hands a source to the
//! session's task, which picks a transaction id and spawns a *sender task*
//! for it. The sender task reads the source and queues TX_START, TX_CHUNK
//! and TX_FINISH itself with [`Queue::push_wait`]: transaction frames are
//! never dropped, and a sender that outruns the socket waits for room, so
//! the session's task never blocks on a slow peer. Ack ids come from the
//! session's task (it owns the ack tracker) through [`TxCommand::Track`].
//!
//! - PUSH reads the source front to back in chunks of at most 1 MiB, at
//!   offsets equal to the byte position of each chunk's first byte.
//! - PULL announces an explicit size and then serves only the ranges the
//!   receiver asks for with TX_FETCH, reading them by seeking. A source that
//!   cannot seek is first spooled to an anonymous temporary file (it has no
//!   name, so nothing is left behind even if the process dies), which also
//!   gives its size. TX_FINISH goes out once `[0, size)` has been served and
//!   no further fetch is waiting.
//!
//! # Receiving
//!
//! Each TX_START becomes an [`IncomingStream`] (an `AsyncRead`), handed to a
//! [`Session::wait_for_stream`](super::Session::wait_for_stream) waiter for
//! its name or else delivered as [`SessionEvent::Stream`](super::SessionEvent).
//! Chunks go to the reader through an unbounded channel, but the bytes
//! buffered across all of a session's streams are capped by [`RxBudget`]:
//! above [`RX_BUFFER_LIMIT`] the session stops reading its socket (it keeps
//! serving its handles) until readers catch up, so TCP flow control slows
//! the sender. A PULL stream asks for [`FETCH_STEP`] bytes at a time and
//! keeps at most two steps outstanding, as its reader consumes.
//! While paused, the session does not count the peer's silence against it
//! (heartbeat); the peer, though, hears nothing from us either, so a
//! reader that stalls for longer than the peer's keep-alive interval can
//! get the session closed by the peer's liveness check.
//!
//! # Protocol errors
//!
//! A chunk that leaves a gap, overlaps bytes already received, does not
//! continue a requested range (PULL), or reaches past the announced size,
//! and a TX_FINISH before all announced bytes arrived, fail *that
//! transaction only*: the peer gets an ERROR frame saying why and a
//! TX_CANCEL, and the reader gets an `InvalidData` error. The session goes
//! on. Frames for transaction ids that were never opened count as malformed
//! input (ERROR, and 4001 after too many); frames for recently ended
//! transactions (in flight when we cancelled) are ignored.
//!
//! # Transaction ids
//!
//! Each side numbers the transactions it sends. Servers use even ids and
//! clients odd ones (as HTTP/2 does), so two endpoints of this crate never
//! pick the same id; an id the peer is currently sending on is skipped too.
//! TX_CHUNK and TX_FINISH always refer to the peer's transactions, TX_FETCH
//! to ours; a TX_CANCEL is applied to whichever side has that id open.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeek, AsyncSeekExt, AsyncWriteExt, ReadBuf};
use tokio::sync::{Notify, mpsc, oneshot};

use super::ack::AckTracker;
use super::queue::{Class, Item, Queue};
use super::{Command, DeliveryError, DeliveryTx};
use crate::protocol::{self, Behaviour, Body, Frame};

/// Most bytes of received chunks buffered for readers, per session, before
/// the session stops reading its socket.
pub const RX_BUFFER_LIMIT: usize = 8 * 1024 * 1024;

/// Size of one TX_FETCH a PULL reader issues; it keeps at most two
/// outstanding, so a PULL stream never has more than 4 MiB in flight.
pub const FETCH_STEP: u64 = 2 * 1024 * 1024;

/// Name used when a stream has none (the protocol's default).
pub const ANONYMOUS: &str = "anonymous";

/// How many TX_FETCH ranges may wait at a sender before further ones are
/// refused with an ERROR frame.
const MAX_PENDING_FETCHES: usize = 1024;

/// How many transactions a peer may have open towards us at once.
const MAX_INCOMING: usize = 1024;

/// How many ended transaction ids are remembered, so that frames that were
/// in flight when a transaction ended are ignored rather than reported.
const ENDED_MEMORY: usize = 256;

/// How to announce an outgoing stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamOptions {
    /// The stream's name (TX_START `name`, at most 1 KiB of UTF-8); the
    /// receiver finds the stream by it.
    pub name: String,
    /// PUSH (the sender sends everything) or PULL (the receiver fetches).
    pub behaviour: Behaviour,
    /// The size in bytes. PUSH: `None` announces an unknown size (`-1`);
    /// `Some(n)` sends exactly `n` bytes and fails if the source ends
    /// sooner. PULL: `None` uses the source's length; `Some(n)` must equal
    /// it.
    pub size: Option<u64>,
}

impl Default for StreamOptions {
    fn default() -> Self {
        StreamOptions::push(ANONYMOUS)
    }
}

impl StreamOptions {
    /// A PUSH stream of unknown size.
    pub fn push(name: impl Into<String>) -> StreamOptions {
        StreamOptions {
            name: name.into(),
            behaviour: Behaviour::Push,
            size: None,
        }
    }

    /// A PULL stream (its size is taken from the source).
    pub fn pull(name: impl Into<String>) -> StreamOptions {
        StreamOptions {
            name: name.into(),
            behaviour: Behaviour::Pull,
            size: None,
        }
    }

    /// Announces this size.
    pub fn size(mut self, size: u64) -> StreamOptions {
        self.size = Some(size);
        self
    }
}

/// Why an outgoing stream did not complete.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// The peer did not announce the transactions feature, so it must not
    /// be sent transaction frames.
    #[error("the peer does not support transactions")]
    NotSupported,
    /// The stream name is longer than the protocol allows.
    #[error("stream name is {0} bytes; at most 1024 are allowed")]
    NameTooLong(usize),
    /// The size does not fit the protocol's signed 64-bit field.
    #[error("stream size {0} exceeds the protocol's limit")]
    TooLarge(u64),
    /// A PUSH source with an announced size ended before that many bytes.
    #[error("the source ended after {sent} of the announced {size} bytes")]
    SourceEnded {
        /// Bytes sent.
        sent: u64,
        /// Bytes announced.
        size: u64,
    },
    /// A PULL source's length differs from the size given in the options.
    #[error("the source has {actual} bytes but {announced} were requested")]
    SizeMismatch {
        /// The size from the options.
        announced: u64,
        /// The source's actual length.
        actual: u64,
    },
    /// Reading (or spooling) the source failed.
    #[error("reading the source failed: {0}")]
    Source(#[source] io::Error),
    /// [`Transfer::cancel`] was called.
    #[error("cancelled")]
    Cancelled,
    /// The peer sent TX_CANCEL.
    #[error("cancelled by the peer")]
    CancelledByPeer,
    /// The peer broke the protocol for this transaction (for example too
    /// many outstanding fetches); it was cancelled.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The session ended before the transfer completed.
    #[error("session closed")]
    Closed,
}

/// A stream being sent. Await it for the number of bytes sent (for PULL:
/// the size) once the peer acknowledged TX_FINISH. Dropping it does not
/// stop the transfer; [`Transfer::cancel`] does.
#[derive(Debug)]
#[must_use = "a transfer runs on its own; await it to learn how it ended"]
pub struct Transfer {
    /// Where the sender task reports the outcome.
    result: oneshot::Receiver<Result<u64, TransferError>>,
    /// Shared with the sender task; fires on a local or peer cancel.
    cancel: Arc<CancelSignal>,
}

impl Transfer {
    /// Stops the transfer: the peer gets TX_CANCEL and the transfer ends
    /// with [`TransferError::Cancelled`].
    pub fn cancel(&self) {
        self.cancel.fire(false);
    }
}

impl Future for Transfer {
    type Output = Result<u64, TransferError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.result)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(TransferError::Closed)))
    }
}

/// Stops a sender task; remembers whether the peer or we asked.
#[derive(Debug, Default)]
pub(crate) struct CancelSignal {
    /// Wakes the sender task (a stored permit, so no wakeup is lost).
    notify: Notify,
    /// Whether the peer's TX_CANCEL fired it.
    by_peer: AtomicBool,
}

impl CancelSignal {
    fn fire(&self, by_peer: bool) {
        if by_peer {
            self.by_peer.store(true, Ordering::Release);
        }
        self.notify.notify_one();
    }

    async fn fired(&self) -> TransferError {
        self.notify.notified().await;
        if self.by_peer.load(Ordering::Acquire) {
            TransferError::CancelledByPeer
        } else {
            TransferError::Cancelled
        }
    }
}

/// A readable and seekable source, boxed.
pub(crate) trait ReadSeek: AsyncRead + AsyncSeek + Send {}
impl<T: AsyncRead + AsyncSeek + Send> ReadSeek for T {}

/// What a stream is read from.
pub(crate) enum Source {
    /// Read front to back; PULL spools it first.
    Reader(Pin<Box<dyn AsyncRead + Send>>),
    /// Read by range (PULL) or front to back from byte 0 (PUSH).
    Seekable(Pin<Box<dyn ReadSeek>>),
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::Reader(_) => "Source::Reader",
            Source::Seekable(_) => "Source::Seekable",
        })
    }
}

/// Builds a transfer request; the session sends it to its task.
pub(crate) fn request(source: Source, options: StreamOptions) -> (TxCommand, Transfer) {
    let (tx, rx) = oneshot::channel();
    let cancel = Arc::new(CancelSignal::default());
    let command = TxCommand::Stream {
        source,
        options,
        result: tx,
        cancel: cancel.clone(),
    };
    (command, Transfer { result: rx, cancel })
}

/// Identifies one incoming transaction across id reuse: the peer's tx id
/// plus a serial unique within the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StreamKey {
    /// The peer's transaction id.
    tx_id: u32,
    /// Our serial for this incarnation of the id.
    serial: u64,
}

/// Transaction requests from handles, readers and sender tasks to the
/// session's task.
pub(crate) enum TxCommand {
    /// Start sending a stream.
    Stream {
        /// What to send.
        source: Source,
        /// How to announce it.
        options: StreamOptions,
        /// Where the outcome goes.
        result: oneshot::Sender<Result<u64, TransferError>>,
        /// Fires to stop the transfer.
        cancel: Arc<CancelSignal>,
    },
    /// A sender task needs an ack id for a frame it is about to queue.
    Track {
        /// Resolved when the frame is acknowledged.
        acked: Option<DeliveryTx>,
        /// The ack id.
        reply: oneshot::Sender<u32>,
    },
    /// A sender task ended; its transaction id is free again.
    SenderDone {
        /// Our transaction id.
        tx_id: u32,
        /// The serial it was started with.
        serial: u64,
    },
    /// A reader asks for `[start, end)` of an incoming PULL stream.
    Fetch {
        /// Which stream.
        key: StreamKey,
        /// First byte.
        start: u64,
        /// One past the last byte (at most the size).
        end: u64,
        /// Where the range's bytes go; `None` means the stream's own reader.
        sink: Option<mpsc::UnboundedSender<Bytes>>,
    },
    /// A reader was dropped before the end: cancel the incoming stream.
    CancelIncoming {
        /// Which stream.
        key: StreamKey,
    },
}

impl fmt::Debug for TxCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TxCommand::Stream { options, .. } => write!(f, "Stream({options:?})"),
            TxCommand::Track { .. } => f.write_str("Track"),
            TxCommand::SenderDone { tx_id, .. } => write!(f, "SenderDone({tx_id})"),
            TxCommand::Fetch {
                key, start, end, ..
            } => write!(f, "Fetch({}, {start}..{end})", key.tx_id),
            TxCommand::CancelIncoming { key } => write!(f, "CancelIncoming({})", key.tx_id),
        }
    }
}

/// Bytes of received chunks waiting for readers, across a session.
#[derive(Debug)]
pub(crate) struct RxBudget {
    /// Bytes buffered now.
    used: AtomicUsize,
    /// Above this the session stops reading its socket.
    limit: usize,
    /// Wakes the session when readers made room.
    room: Notify,
}

impl RxBudget {
    fn new(limit: usize) -> RxBudget {
        RxBudget {
            used: AtomicUsize::new(0),
            limit,
            room: Notify::new(),
        }
    }

    fn add(&self, n: usize) {
        self.used.fetch_add(n, Ordering::AcqRel);
    }

    fn release(&self, n: usize) {
        let before = self.used.fetch_sub(n, Ordering::AcqRel);
        if before >= self.limit && before - n < self.limit {
            self.room.notify_waiters();
        }
    }

    /// Whether the session should stop reading its socket.
    pub(crate) fn exhausted(&self) -> bool {
        self.used.load(Ordering::Acquire) >= self.limit
    }

    /// Completes once the buffered bytes are below the limit.
    pub(crate) async fn room(&self) {
        loop {
            let notified = self.room.notified();
            if !self.exhausted() {
                return;
            }
            notified.await;
        }
    }
}

/// How an incoming stream ended, as seen by its readers.
#[derive(Debug, Clone)]
enum End {
    /// Still running (if the channel closes in this state, the session
    /// ended).
    Open,
    /// TX_FINISH arrived and every announced byte was received.
    Finished,
    /// Cancelled or failed; readers get this error.
    Failed(io::ErrorKind, String),
}

/// The end state of one incoming stream, shared by its readers and the
/// session's task.
#[derive(Debug)]
struct StreamEnd(Mutex<End>);

impl StreamEnd {
    fn set(&self, end: End) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = end;
    }

    fn get(&self) -> End {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// A stream the peer is sending: read it with [`tokio::io::AsyncReadExt`].
///
/// Reading a PUSH stream yields its bytes in order and then EOF after the
/// peer's TX_FINISH. Reading a PULL stream issues TX_FETCH ranges as the
/// bytes are consumed; [`IncomingStream::request_range`] asks for any range
/// separately. A cancel from the peer, a protocol error or the end of the
/// session make reads fail. Dropping the stream before its end sends
/// TX_CANCEL.
pub struct IncomingStream {
    /// The announced name (`anonymous` when empty).
    name: String,
    /// The announced size; `None` for an unknown-size PUSH.
    size: Option<u64>,
    /// PUSH or PULL.
    behaviour: Behaviour,
    /// Which transaction this is.
    key: StreamKey,
    /// Chunks in order, from the session's task.
    rx: mpsc::UnboundedReceiver<Bytes>,
    /// The rest of the chunk being read.
    current: Bytes,
    /// Bytes handed to the application so far.
    consumed: u64,
    /// PULL: end of the ranges requested for this reader so far.
    requested: u64,
    /// How the transaction ended.
    end: Arc<StreamEnd>,
    /// The session-wide receive buffer budget.
    budget: Arc<RxBudget>,
    /// The session's task, for fetches and the cancel on drop.
    commands: mpsc::UnboundedSender<Command>,
    /// Reached EOF or an error: nothing to cancel on drop.
    done: bool,
}

impl fmt::Debug for IncomingStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IncomingStream")
            .field("name", &self.name)
            .field("size", &self.size)
            .field("behaviour", &self.behaviour)
            .field("tx_id", &self.key.tx_id)
            .field("consumed", &self.consumed)
            .finish()
    }
}

impl IncomingStream {
    /// The stream's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The announced size; `None` when the sender did not know it.
    pub fn size(&self) -> Option<u64> {
        self.size
    }

    /// PUSH or PULL.
    pub fn behaviour(&self) -> Behaviour {
        self.behaviour
    }

    /// The peer's transaction id.
    pub fn tx_id(&self) -> u32 {
        self.key.tx_id
    }

    /// Options that announce a stream like this one (same name, behaviour
    /// and size), for sending it on.
    pub fn options(&self) -> StreamOptions {
        StreamOptions {
            name: self.name.clone(),
            behaviour: self.behaviour,
            size: self.size,
        }
    }

    /// Stops the stream: the peer gets TX_CANCEL, further reads fail.
    pub fn cancel(self) {
        // Drop sends the TX_CANCEL unless the stream already ended.
        drop(self);
    }

    /// Asks a PULL sender for `[start, end)` (an `end` past the size means
    /// to the end) and returns a reader of exactly those bytes. Ranges may
    /// be asked in any order and may overlap; each gets its own copy.
    ///
    /// The sender finishes the transaction once `[0, size)` has been served
    /// and no fetch is waiting, so a range asked after that fails.
    pub fn request_range(&self, start: u64, end: u64) -> io::Result<StreamRange> {
        let size = match (self.behaviour, self.size) {
            (Behaviour::Pull, Some(size)) => size,
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "only PULL streams serve ranges",
                ));
            }
        };
        if start >= end || start >= size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("range [{start}, {end}) is empty or starts past the size {size}"),
            ));
        }
        let end = end.min(size);
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = self.commands.send(Command::Tx(TxCommand::Fetch {
            key: self.key,
            start,
            end,
            sink: Some(tx),
        }));
        Ok(StreamRange {
            rx,
            current: Bytes::new(),
            remaining: end - start,
            end: self.end.clone(),
            budget: self.budget.clone(),
        })
    }

    /// PULL: keeps up to two [`FETCH_STEP`]s requested ahead of the reader.
    fn request_window(&mut self) {
        let Some(size) = self.size else { return };
        if self.behaviour != Behaviour::Pull {
            return;
        }
        while self.requested < size && self.requested - self.consumed < 2 * FETCH_STEP {
            let start = self.requested;
            let end = (start + FETCH_STEP).min(size);
            self.requested = end;
            let _ = self.commands.send(Command::Tx(TxCommand::Fetch {
                key: self.key,
                start,
                end,
                sink: None,
            }));
        }
    }

    /// What a read returns once the chunk channel closed.
    fn ended(&mut self) -> io::Result<()> {
        self.done = true;
        match self.end.get() {
            End::Finished => match (self.behaviour, self.size) {
                (Behaviour::Pull, Some(size)) if self.consumed < size => Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "transaction finished after {} of {size} bytes were read",
                        self.consumed
                    ),
                )),
                _ => Ok(()),
            },
            End::Failed(kind, why) => Err(io::Error::new(kind, why)),
            End::Open => Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "session closed",
            )),
        }
    }
}

impl AsyncRead for IncomingStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.current.is_empty() {
                let n = this.current.len().min(buf.remaining());
                buf.put_slice(&this.current.split_to(n));
                this.consumed += n as u64;
                return Poll::Ready(Ok(()));
            }
            if this.done {
                return Poll::Ready(this.ended());
            }
            if this.behaviour == Behaviour::Pull && Some(this.consumed) == this.size {
                this.done = true;
                return Poll::Ready(Ok(()));
            }
            this.request_window();
            match this.rx.poll_recv(cx) {
                Poll::Ready(Some(bytes)) => {
                    this.budget.release(bytes.len());
                    this.current = bytes;
                }
                Poll::Ready(None) => return Poll::Ready(this.ended()),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl Drop for IncomingStream {
    fn drop(&mut self) {
        drain(&mut self.rx, &self.budget);
        if !self.done {
            let _ = self
                .commands
                .send(Command::Tx(TxCommand::CancelIncoming { key: self.key }));
        }
    }
}

/// Empties a chunk channel, giving its bytes back to the budget.
fn drain(rx: &mut mpsc::UnboundedReceiver<Bytes>, budget: &RxBudget) {
    rx.close();
    while let Ok(bytes) = rx.try_recv() {
        budget.release(bytes.len());
    }
}

/// The bytes of one range of a PULL stream (see
/// [`IncomingStream::request_range`]): exactly the range, then EOF.
pub struct StreamRange {
    /// Chunks of this range, from the session's task.
    rx: mpsc::UnboundedReceiver<Bytes>,
    /// The rest of the chunk being read.
    current: Bytes,
    /// Bytes of the range not yet read.
    remaining: u64,
    /// How the transaction ended.
    end: Arc<StreamEnd>,
    /// The session-wide receive buffer budget.
    budget: Arc<RxBudget>,
}

impl fmt::Debug for StreamRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamRange")
            .field("remaining", &self.remaining)
            .finish()
    }
}

impl AsyncRead for StreamRange {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.current.is_empty() {
                let n = this.current.len().min(buf.remaining());
                buf.put_slice(&this.current.split_to(n));
                this.remaining -= n as u64;
                return Poll::Ready(Ok(()));
            }
            if this.remaining == 0 {
                return Poll::Ready(Ok(()));
            }
            match this.rx.poll_recv(cx) {
                Poll::Ready(Some(bytes)) => {
                    this.budget.release(bytes.len());
                    this.current = bytes;
                }
                Poll::Ready(None) => {
                    let err = match this.end.get() {
                        End::Failed(kind, why) => io::Error::new(kind, why),
                        End::Finished => io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "transaction finished before the range was served",
                        ),
                        End::Open => {
                            io::Error::new(io::ErrorKind::ConnectionAborted, "session closed")
                        }
                    };
                    return Poll::Ready(Err(err));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl Drop for StreamRange {
    fn drop(&mut self) {
        drain(&mut self.rx, &self.budget);
    }
}

/// A transaction we are sending, as the session's task knows it.
struct Outgoing {
    /// Distinguishes reuses of the id.
    serial: u64,
    /// PUSH senders get no fetches.
    behaviour: Behaviour,
    /// TX_FETCH ranges for the sender task.
    fetches: mpsc::Sender<(u64, u64)>,
    /// Stops the sender task.
    cancel: Arc<CancelSignal>,
}

/// A requested range of an incoming PULL stream not yet fully received.
struct Range {
    /// Offset the next chunk of this range must have.
    next: u64,
    /// One past the range's last byte.
    end: u64,
    /// Where its bytes go.
    sink: mpsc::UnboundedSender<Bytes>,
}

/// A transaction the peer is sending us.
struct Incoming {
    /// Distinguishes reuses of the id.
    serial: u64,
    /// PUSH or PULL.
    behaviour: Behaviour,
    /// Announced size.
    size: Option<u64>,
    /// PUSH: the offset the next chunk must have.
    next: u64,
    /// The reader's channel.
    main: mpsc::UnboundedSender<Bytes>,
    /// PULL: requested ranges in request order.
    ranges: VecDeque<Range>,
    /// How it ended, for the readers.
    end: Arc<StreamEnd>,
}

/// What the session's task must do after a transaction frame.
pub(crate) enum TxEffect {
    /// Count the frame as malformed input (ERROR; 4001 after too many).
    Malformed(String),
    /// Hand a new stream to the application.
    Announce(IncomingStream),
}

/// What the sender tasks need from their session.
#[derive(Clone)]
struct Link {
    /// Stamped on every frame.
    sid: u64,
    /// Where frames go (with `push_wait`).
    queue: Arc<Queue>,
    /// The session's task, for ack ids and the end notice.
    commands: mpsc::UnboundedSender<Command>,
    /// Largest chunk payload: 1 MiB, or less when the queue cap is small,
    /// so that one chunk always fits the queue.
    chunk_size: usize,
}

/// All transactions of one session; owned by the session's task.
pub(crate) struct Transactions {
    /// This session's id.
    sid: u64,
    /// The session's outgoing queue.
    queue: Arc<Queue>,
    /// The next id we try for an outgoing transaction (steps by 2).
    next_id: u32,
    /// Serial for the next transaction (either direction).
    serial: u64,
    /// The session's command channel; set when the session starts running.
    commands: Option<mpsc::UnboundedSender<Command>>,
    /// Transactions we send, by our id.
    outgoing: HashMap<u32, Outgoing>,
    /// Transactions we receive, by the peer's id.
    incoming: HashMap<u32, Incoming>,
    /// Recently ended incoming ids, oldest first.
    ended: VecDeque<u32>,
    /// Receive buffer budget shared with the readers.
    budget: Arc<RxBudget>,
}

impl Transactions {
    /// `even_ids` for the server end, odd ids for the client end.
    pub(crate) fn new(sid: u64, queue: Arc<Queue>, even_ids: bool) -> Transactions {
        Transactions {
            sid,
            queue,
            next_id: if even_ids { 0 } else { 1 },
            serial: 0,
            commands: None,
            outgoing: HashMap::new(),
            incoming: HashMap::new(),
            ended: VecDeque::new(),
            budget: Arc::new(RxBudget::new(RX_BUFFER_LIMIT)),
        }
    }

    /// Connects to the session's command channel (sender tasks and readers
    /// talk to the task through it).
    pub(crate) fn attach(&mut self, commands: mpsc::UnboundedSender<Command>) {
        self.commands = Some(commands);
    }

    /// The receive budget, so the task can pause reading.
    pub(crate) fn budget(&self) -> Arc<RxBudget> {
        self.budget.clone()
    }

    fn chunk_size(&self) -> usize {
        let frame_room = (self.queue.limits().max_queued_bytes / 2).saturating_sub(64);
        frame_room.clamp(1, protocol::MAX_PAYLOAD)
    }

    /// Queues a transaction frame from the session's task: tracked if it
    /// has an ack field, never dropped, never waiting (these frames are a
    /// few dozen bytes).
    fn send(&mut self, acks: &mut AckTracker, mut body: Body) {
        if body.ack().is_some() {
            body.set_ack(acks.track(std::time::Instant::now(), None));
        }
        let class = match body {
            Body::Error { .. } => Class::Control,
            _ => Class::Transaction,
        };
        let frame = Frame::new(self.sid, body);
        let _ = self.queue.push(Item::Frame {
            ack: frame.body.ack(),
            ty: frame.body.frame_type(),
            bytes: frame.encode(),
            class,
        });
    }

    fn error(&mut self, acks: &mut AckTracker, message: String) {
        self.send(acks, Body::Error { ack: 0, message });
    }

    fn remember_ended(&mut self, tx_id: u32) {
        if self.ended.len() == ENDED_MEMORY {
            self.ended.pop_front();
        }
        self.ended.push_back(tx_id);
    }

    /// Fails an incoming transaction for a protocol error: ERROR and
    /// TX_CANCEL to the peer, `InvalidData` to the reader.
    fn fail_incoming(&mut self, acks: &mut AckTracker, tx_id: u32, why: String) {
        tracing::debug!(sid = self.sid, tx_id, "transaction failed: {why}");
        if let Some(inc) = self.incoming.remove(&tx_id) {
            inc.end
                .set(End::Failed(io::ErrorKind::InvalidData, why.clone()));
        }
        self.remember_ended(tx_id);
        self.error(acks, format!("transaction {tx_id}: {why}"));
        self.send(acks, Body::TxCancel { ack: 0, tx_id });
    }

    /// Handles a transaction frame from the peer (its ACK was already
    /// sent).
    pub(crate) fn on_frame(&mut self, acks: &mut AckTracker, body: Body) -> Option<TxEffect> {
        match body {
            Body::TxStart {
                tx_id,
                size,
                behaviour,
                name,
                ..
            } => self.on_start(acks, tx_id, size, behaviour, name),
            Body::TxChunk {
                tx_id,
                offset,
                data,
            } => self.on_chunk(acks, tx_id, offset, data),
            Body::TxFinish { tx_id, .. } => self.on_finish(acks, tx_id),
            Body::TxFetch {
                tx_id, start, end, ..
            } => {
                self.on_fetch(acks, tx_id, start, end);
                None
            }
            Body::TxCancel { tx_id, .. } => {
                self.on_cancel(tx_id);
                None
            }
            _ => None,
        }
    }

    fn on_start(
        &mut self,
        acks: &mut AckTracker,
        tx_id: u32,
        size: i64,
        behaviour: Behaviour,
        name: String,
    ) -> Option<TxEffect> {
        if self.incoming.contains_key(&tx_id) {
            self.error(
                acks,
                format!("TX_START for transaction {tx_id}, which is already open; ignored"),
            );
            return None;
        }
        if self.incoming.len() >= MAX_INCOMING {
            self.error(
                acks,
                format!("transaction {tx_id}: more than {MAX_INCOMING} open transactions"),
            );
            self.send(acks, Body::TxCancel { ack: 0, tx_id });
            return None;
        }
        let commands = self.commands.clone()?;
        // The codec rejects sizes below -1 and PULL with -1.
        let size = u64::try_from(size).ok();
        let name = if name.is_empty() {
            ANONYMOUS.to_string()
        } else {
            name
        };
        self.ended.retain(|&id| id != tx_id);
        self.serial += 1;
        let key = StreamKey {
            tx_id,
            serial: self.serial,
        };
        let (main, rx) = mpsc::unbounded_channel();
        let end = Arc::new(StreamEnd(Mutex::new(End::Open)));
        self.incoming.insert(
            tx_id,
            Incoming {
                serial: key.serial,
                behaviour,
                size,
                next: 0,
                main,
                ranges: VecDeque::new(),
                end: end.clone(),
            },
        );
        Some(TxEffect::Announce(IncomingStream {
            name,
            size,
            behaviour,
            key,
            rx,
            current: Bytes::new(),
            consumed: 0,
            requested: 0,
            end,
            budget: self.budget.clone(),
            commands,
            done: false,
        }))
    }

    fn on_chunk(
        &mut self,
        acks: &mut AckTracker,
        tx_id: u32,
        offset: u64,
        data: Bytes,
    ) -> Option<TxEffect> {
        let Some(inc) = self.incoming.get_mut(&tx_id) else {
            if self.ended.contains(&tx_id) {
                return None;
            }
            return Some(TxEffect::Malformed(format!(
                "TX_CHUNK for transaction {tx_id}, which is not open"
            )));
        };
        let len = data.len() as u64;
        let Some(chunk_end) = offset.checked_add(len) else {
            let why = format!("chunk offset {offset} overflows");
            self.fail_incoming(acks, tx_id, why);
            return None;
        };
        if let Some(size) = inc.size
            && chunk_end > size
        {
            let why =
                format!("chunk [{offset}, {chunk_end}) reaches past the announced size {size}");
            self.fail_incoming(acks, tx_id, why);
            return None;
        }
        let sink = match inc.behaviour {
            Behaviour::Push => {
                if offset != inc.next {
                    let what = if offset > inc.next { "gap" } else { "overlap" };
                    let why = format!(
                        "chunk at offset {offset} leaves a {what}: expected offset {}",
                        inc.next
                    );
                    self.fail_incoming(acks, tx_id, why);
                    return None;
                }
                inc.next = chunk_end;
                &inc.main
            }
            Behaviour::Pull => {
                if len == 0 {
                    return None;
                }
                let Some(pos) = inc
                    .ranges
                    .iter()
                    .position(|r| r.next == offset && chunk_end <= r.end)
                else {
                    let why = format!(
                        "chunk [{offset}, {chunk_end}) does not continue any requested range \
                         (gap, overlap or not requested)"
                    );
                    self.fail_incoming(acks, tx_id, why);
                    return None;
                };
                let range = &mut inc.ranges[pos];
                range.next = chunk_end;
                if range.next == range.end {
                    let done = inc.ranges.remove(pos).expect("position is valid");
                    deliver(&self.budget, &done.sink, data);
                    return None;
                }
                &inc.ranges[pos].sink
            }
        };
        if len > 0 {
            deliver(&self.budget, sink, data);
        }
        None
    }

    fn on_finish(&mut self, acks: &mut AckTracker, tx_id: u32) -> Option<TxEffect> {
        let Some(inc) = self.incoming.get(&tx_id) else {
            if self.ended.contains(&tx_id) {
                return None;
            }
            return Some(TxEffect::Malformed(format!(
                "TX_FINISH for transaction {tx_id}, which is not open"
            )));
        };
        if inc.behaviour == Behaviour::Push
            && let Some(size) = inc.size
            && inc.next != size
        {
            let why = format!("finished after {} of the announced {size} bytes", inc.next);
            self.fail_incoming(acks, tx_id, why);
            return None;
        }
        if let Some(inc) = self.incoming.remove(&tx_id) {
            inc.end.set(End::Finished);
        }
        self.remember_ended(tx_id);
        None
    }

    fn on_fetch(&mut self, acks: &mut AckTracker, tx_id: u32, start: u64, end: u64) {
        let Some(out) = self.outgoing.get(&tx_id) else {
            // Finished or cancelled meanwhile: nothing left to serve.
            tracing::debug!(sid = self.sid, tx_id, "TX_FETCH for no open transaction");
            return;
        };
        if out.behaviour == Behaviour::Push {
            self.error(
                acks,
                format!("TX_FETCH for transaction {tx_id}, which is PUSH; ignored"),
            );
            return;
        }
        if out.fetches.try_send((start, end)).is_err() {
            self.error(
                acks,
                format!(
                    "transaction {tx_id}: more than {MAX_PENDING_FETCHES} outstanding TX_FETCH; ignored"
                ),
            );
        }
    }

    fn on_cancel(&mut self, tx_id: u32) {
        if let Some(inc) = self.incoming.remove(&tx_id) {
            inc.end.set(End::Failed(
                io::ErrorKind::ConnectionAborted,
                "cancelled by the peer".into(),
            ));
            self.remember_ended(tx_id);
        }
        if let Some(out) = self.outgoing.get(&tx_id) {
            out.cancel.fire(true);
        }
    }

    /// Handles a request from a handle, reader or sender task.
    pub(crate) fn on_command(
        &mut self,
        acks: &mut AckTracker,
        command: TxCommand,
        peer_features: u64,
    ) {
        match command {
            TxCommand::Stream {
                source,
                options,
                result,
                cancel,
            } => self.start(source, options, result, cancel, peer_features),
            TxCommand::Track { acked, reply } => {
                let id = acks.track(std::time::Instant::now(), acked);
                if let Err(_unused) = reply.send(id) {
                    acks.forget(id, DeliveryError::Closed);
                }
            }
            TxCommand::SenderDone { tx_id, serial } => {
                if self
                    .outgoing
                    .get(&tx_id)
                    .is_some_and(|o| o.serial == serial)
                {
                    self.outgoing.remove(&tx_id);
                }
            }
            TxCommand::Fetch {
                key,
                start,
                end,
                sink,
            } => {
                let Some(inc) = self.incoming.get_mut(&key.tx_id) else {
                    return;
                };
                if inc.serial != key.serial {
                    return;
                }
                let sink = sink.unwrap_or_else(|| inc.main.clone());
                inc.ranges.push_back(Range {
                    next: start,
                    end,
                    sink,
                });
                self.send(
                    acks,
                    Body::TxFetch {
                        ack: 0,
                        tx_id: key.tx_id,
                        start,
                        end,
                    },
                );
            }
            TxCommand::CancelIncoming { key } => {
                if self
                    .incoming
                    .get(&key.tx_id)
                    .is_some_and(|i| i.serial == key.serial)
                {
                    if let Some(inc) = self.incoming.remove(&key.tx_id) {
                        inc.end.set(End::Failed(
                            io::ErrorKind::ConnectionAborted,
                            "cancelled by this side".into(),
                        ));
                    }
                    self.remember_ended(key.tx_id);
                    self.send(
                        acks,
                        Body::TxCancel {
                            ack: 0,
                            tx_id: key.tx_id,
                        },
                    );
                }
            }
        }
    }

    fn start(
        &mut self,
        source: Source,
        options: StreamOptions,
        result: oneshot::Sender<Result<u64, TransferError>>,
        cancel: Arc<CancelSignal>,
        peer_features: u64,
    ) {
        if peer_features & protocol::FEATURE_TRANSACTIONS == 0 {
            let _ = result.send(Err(TransferError::NotSupported));
            return;
        }
        let Some(commands) = self.commands.clone() else {
            let _ = result.send(Err(TransferError::Closed));
            return;
        };
        // Ids step by two from the role's parity; skip ids in use either way
        // so a TX_CANCEL is never ambiguous with our own peers.
        let mut tx_id = self.next_id;
        while self.outgoing.contains_key(&tx_id) || self.incoming.contains_key(&tx_id) {
            tx_id = tx_id.wrapping_add(2);
        }
        self.next_id = tx_id.wrapping_add(2);
        self.serial += 1;
        let serial = self.serial;
        let (fetch_tx, fetch_rx) = mpsc::channel(MAX_PENDING_FETCHES);
        self.outgoing.insert(
            tx_id,
            Outgoing {
                serial,
                behaviour: options.behaviour,
                fetches: fetch_tx,
                cancel: cancel.clone(),
            },
        );
        let link = Link {
            sid: self.sid,
            queue: self.queue.clone(),
            commands,
            chunk_size: self.chunk_size(),
        };
        tokio::spawn(async move {
            let outcome = run_sender(&link, tx_id, source, options, fetch_rx, &cancel).await;
            if let Err(e) = &outcome {
                tracing::debug!(sid = link.sid, tx_id, "transfer ended: {e}");
            }
            let _ = link
                .commands
                .send(Command::Tx(TxCommand::SenderDone { tx_id, serial }));
            let _ = result.send(outcome);
        });
    }

    /// The session ended: readers fail, sender tasks stop.
    pub(crate) fn close(&mut self) {
        for (_, inc) in self.incoming.drain() {
            inc.end.set(End::Failed(
                io::ErrorKind::ConnectionAborted,
                "session closed".into(),
            ));
        }
        self.outgoing.clear();
    }
}

/// Hands a chunk to a reader, counting it against the budget (unless the
/// reader is gone).
fn deliver(budget: &RxBudget, sink: &mpsc::UnboundedSender<Bytes>, data: Bytes) {
    let len = data.len();
    budget.add(len);
    if sink.send(data).is_err() {
        budget.release(len);
    }
}

impl Link {
    /// An ack id for a frame about to be queued.
    async fn track(&self, acked: Option<DeliveryTx>) -> Result<u32, TransferError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Tx(TxCommand::Track { acked, reply: tx }))
            .map_err(|_| TransferError::Closed)?;
        rx.await.map_err(|_| TransferError::Closed)
    }

    /// Queues a frame, waiting for room.
    async fn send(&self, body: Body) -> Result<(), TransferError> {
        let frame = Frame::new(self.sid, body);
        let item = Item::Frame {
            ack: frame.body.ack(),
            ty: frame.body.frame_type(),
            bytes: frame.encode(),
            class: Class::Transaction,
        };
        self.queue
            .push_wait(item)
            .await
            .map_err(|()| TransferError::Closed)
    }

    /// Queues an ACK-tracked frame, waiting for room.
    async fn send_tracked(
        &self,
        mut body: Body,
        acked: Option<DeliveryTx>,
    ) -> Result<(), TransferError> {
        body.set_ack(self.track(acked).await?);
        self.send(body).await
    }
}

/// Runs one outgoing transaction to its end, sending TX_CANCEL if it ends
/// early on our side.
async fn run_sender(
    link: &Link,
    tx_id: u32,
    source: Source,
    options: StreamOptions,
    mut fetches: mpsc::Receiver<(u64, u64)>,
    cancel: &CancelSignal,
) -> Result<u64, TransferError> {
    let work = async {
        match options.behaviour {
            Behaviour::Push => push(link, tx_id, source, &options).await,
            Behaviour::Pull => pull(link, tx_id, source, &options, &mut fetches).await,
        }
    };
    let outcome = tokio::select! {
        outcome = work => outcome,
        why = cancel.fired() => Err(why),
    };
    let started = !matches!(
        outcome,
        Err(TransferError::SizeMismatch { .. } | TransferError::Closed)
    );
    let tell_peer = matches!(
        outcome,
        Err(TransferError::Cancelled
            | TransferError::Source(_)
            | TransferError::SourceEnded { .. }
            | TransferError::Protocol(_))
    );
    if started && tell_peer {
        let _ = link
            .send_tracked(Body::TxCancel { ack: 0, tx_id }, None)
            .await;
    }
    outcome
}

fn tx_size(size: u64) -> Result<i64, TransferError> {
    i64::try_from(size).map_err(|_| TransferError::TooLarge(size))
}

/// Sends TX_FINISH and waits for its ACK (an ack timeout still counts as
/// delivered: every byte was queued in order before it).
async fn finish(link: &Link, tx_id: u32, total: u64) -> Result<u64, TransferError> {
    let (tx, rx) = oneshot::channel();
    link.send_tracked(Body::TxFinish { ack: 0, tx_id }, Some(tx))
        .await?;
    match rx.await {
        Ok(Ok(_)) | Ok(Err(DeliveryError::Timeout)) => Ok(total),
        _ => Err(TransferError::Closed),
    }
}

/// PUSH: chunks in order from the source, then TX_FINISH.
async fn push(
    link: &Link,
    tx_id: u32,
    source: Source,
    options: &StreamOptions,
) -> Result<u64, TransferError> {
    let mut reader: Pin<Box<dyn AsyncRead + Send>> = match source {
        Source::Reader(r) => r,
        Source::Seekable(mut s) => {
            s.seek(io::SeekFrom::Start(0))
                .await
                .map_err(TransferError::Source)?;
            Box::pin(s)
        }
    };
    let size = options.size.map(tx_size).transpose()?.unwrap_or(-1);
    link.send_tracked(
        Body::TxStart {
            ack: 0,
            tx_id,
            size,
            behaviour: Behaviour::Push,
            name: options.name.clone(),
        },
        None,
    )
    .await?;
    let mut offset = 0u64;
    loop {
        let want = match options.size {
            Some(size) => (size - offset).min(link.chunk_size as u64) as usize,
            None => link.chunk_size,
        };
        if want == 0 {
            break;
        }
        let mut buf = BytesMut::with_capacity(want);
        let n = (&mut reader)
            .take(want as u64)
            .read_buf(&mut buf)
            .await
            .map_err(TransferError::Source)?;
        if n == 0 {
            if let Some(size) = options.size {
                return Err(TransferError::SourceEnded { sent: offset, size });
            }
            break;
        }
        link.send(Body::TxChunk {
            tx_id,
            offset,
            data: buf.freeze(),
        })
        .await?;
        offset += n as u64;
    }
    finish(link, tx_id, offset).await
}

/// Merged, sorted byte ranges a PULL sender has served.
#[derive(Debug, Default)]
struct Coverage(Vec<(u64, u64)>);

impl Coverage {
    fn insert(&mut self, start: u64, end: u64) {
        self.0.push((start, end));
        self.0.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(self.0.len());
        for &(s, e) in &self.0 {
            match merged.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        self.0 = merged;
    }

    fn covers(&self, size: u64) -> bool {
        size == 0 || self.0.first() == Some(&(0, size))
    }
}

/// PULL: announce the size, serve TX_FETCH ranges, finish once everything
/// was served.
async fn pull(
    link: &Link,
    tx_id: u32,
    source: Source,
    options: &StreamOptions,
    fetches: &mut mpsc::Receiver<(u64, u64)>,
) -> Result<u64, TransferError> {
    let (mut file, size) = match source {
        Source::Seekable(mut s) => {
            let len = s
                .seek(io::SeekFrom::End(0))
                .await
                .map_err(TransferError::Source)?;
            (s, len)
        }
        Source::Reader(r) => spool(r).await?,
    };
    if let Some(announced) = options.size
        && announced != size
    {
        return Err(TransferError::SizeMismatch {
            announced,
            actual: size,
        });
    }
    link.send_tracked(
        Body::TxStart {
            ack: 0,
            tx_id,
            size: tx_size(size)?,
            behaviour: Behaviour::Pull,
            name: options.name.clone(),
        },
        None,
    )
    .await?;
    let mut served = Coverage::default();
    loop {
        let next = if served.covers(size) {
            match fetches.try_recv() {
                Ok(range) => Some(range),
                Err(mpsc::error::TryRecvError::Empty) => None,
                Err(mpsc::error::TryRecvError::Disconnected) => return Err(TransferError::Closed),
            }
        } else {
            Some(fetches.recv().await.ok_or(TransferError::Closed)?)
        };
        let Some((start, end)) = next else {
            return finish(link, tx_id, size).await;
        };
        if start >= end || start >= size {
            link.send_tracked(
                Body::Error {
                    ack: 0,
                    message: format!(
                        "transaction {tx_id}: TX_FETCH [{start}, {end}) is empty or starts past the size {size}; ignored"
                    ),
                },
                None,
            )
            .await?;
            continue;
        }
        let end = end.min(size);
        file.seek(io::SeekFrom::Start(start))
            .await
            .map_err(TransferError::Source)?;
        let mut pos = start;
        while pos < end {
            let want = (end - pos).min(link.chunk_size as u64) as usize;
            let mut buf = BytesMut::with_capacity(want);
            while buf.len() < want {
                let n = (&mut file)
                    .take((want - buf.len()) as u64)
                    .read_buf(&mut buf)
                    .await
                    .map_err(TransferError::Source)?;
                if n == 0 {
                    return Err(TransferError::Source(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("the source shrank below {size} bytes"),
                    )));
                }
            }
            link.send(Body::TxChunk {
                tx_id,
                offset: pos,
                data: buf.freeze(),
            })
            .await?;
            pos += want as u64;
        }
        served.insert(start, end);
    }
}

/// Copies a non-seekable source into an anonymous temporary file (unlinked
/// on creation: it disappears with the last handle) and returns the file
/// and its length.
async fn spool(
    mut reader: Pin<Box<dyn AsyncRead + Send>>,
) -> Result<(Pin<Box<dyn ReadSeek>>, u64), TransferError> {
    let file = tokio::task::spawn_blocking(tempfile::tempfile)
        .await
        .map_err(|e| TransferError::Source(io::Error::other(e)))?
        .map_err(TransferError::Source)?;
    let mut file = tokio::fs::File::from_std(file);
    let mut buf = BytesMut::with_capacity(protocol::MAX_PAYLOAD);
    let mut total = 0u64;
    loop {
        buf.clear();
        let n = (&mut reader)
            .take(protocol::MAX_PAYLOAD as u64)
            .read_buf(&mut buf)
            .await
            .map_err(TransferError::Source)?;
        if n == 0 {
            break;
        }
        file.write_all(&buf).await.map_err(TransferError::Source)?;
        total += n as u64;
    }
    file.flush().await.map_err(TransferError::Source)?;
    Ok((Box::pin(file), total))
}

/// Streams waiting to be claimed by name, per session.
#[derive(Debug, Default)]
pub(crate) struct Waiters(HashMap<String, VecDeque<oneshot::Sender<IncomingStream>>>);

impl Waiters {
    /// Registers a waiter for `name`.
    pub(crate) fn add(&mut self, name: String, tx: oneshot::Sender<IncomingStream>) {
        self.0.entry(name).or_default().push_back(tx);
    }

    /// Hands `stream` to the oldest live waiter for its name, or gives it
    /// back.
    pub(crate) fn offer(&mut self, mut stream: IncomingStream) -> Option<IncomingStream> {
        let name = stream.name.clone();
        let Some(queue) = self.0.get_mut(&name) else {
            return Some(stream);
        };
        while let Some(tx) = queue.pop_front() {
            match tx.send(stream) {
                Ok(()) => {
                    if queue.is_empty() {
                        self.0.remove(&name);
                    }
                    return None;
                }
                Err(back) => stream = back,
            }
        }
        self.0.remove(&name);
        Some(stream)
    }

    /// Forgets waiters that gave up.
    pub(crate) fn prune(&mut self, name: &str) {
        if let Some(queue) = self.0.get_mut(name) {
            queue.retain(|tx| !tx.is_closed());
            if queue.is_empty() {
                self.0.remove(name);
            }
        }
    }

    /// Fails every waiter (the session ended).
    pub(crate) fn clear(&mut self) {
        self.0.clear();
    }
}

/// Why [`Session::wait_for_stream`](super::Session::wait_for_stream) gave
/// up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WaitError {
    /// No stream with that name was announced in time.
    #[error("no stream with that name within the timeout")]
    Timeout,
    /// The session ended first.
    #[error("session closed")]
    Closed,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coverage_merges_overlapping_and_adjacent_ranges() {
        let mut c = Coverage::default();
        c.insert(50, 60);
        assert!(!c.covers(100));
        c.insert(0, 20);
        c.insert(10, 50);
        assert_eq!(c.0, vec![(0, 60)]);
        c.insert(60, 100);
        assert!(c.covers(100));
        assert!(Coverage::default().covers(0));
    }
}
