//! CAMP.Transaction: streams in both directions over one session.
//!
//! # Sending
//!
//! [`Session::stream`](super::Session::stream) hands a source to the
//! session's task, which picks a transaction id and spawns a *sender task*
//! for it. The sender task reads the source and queues TX_START, TX_CHUNK
//! and TX_FINISH itself with `Queue::push_wait`: transaction frames are
//! never dropped, and a sender that outruns the socket waits for room, so
//! the session's task never blocks on a slow peer. Ack ids come from the
//! session's task (it owns the ack tracker) through `TxCommand::Track`.
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
//! buffered across all of a session's streams are capped by `RxBudget`:
//! above `limits.max_receive_buffer_bytes` ([`RX_BUFFER_LIMIT`] by
//! default) the session stops reading its socket (it keeps
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
//!

mod incoming;
mod sender;
mod state;

pub use incoming::{IncomingStream, StreamRange, WaitError};
pub(crate) use incoming::{RxBudget, Waiters};
pub(crate) use sender::Source;
pub(crate) use state::{Transactions, TxCommand, TxEffect};

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::oneshot;

use crate::protocol::Behaviour;
use sender::CancelSignal;

/// Most bytes of received chunks buffered for readers (and held by relays),
/// per session, before the session stops reading its socket: the default
/// of `limits.max_receive_buffer_bytes`.
pub const RX_BUFFER_LIMIT: usize = 8 * 1024 * 1024;

/// Size of one TX_FETCH a PULL reader issues; it keeps at most two
/// outstanding, so a PULL stream never has more than 4 MiB in flight.
pub const FETCH_STEP: u64 = 2 * 1024 * 1024;

/// Name used when a stream has none (the protocol's default).
pub const ANONYMOUS: &str = "anonymous";

/// How many TX_FETCH ranges may wait at a sender before further ones are
/// refused with an ERROR frame.
const MAX_PENDING_FETCHES: usize = 1024;

/// Limits on a session's transactions. Cloning shares the spool budget
/// (server-wide: every session of a server holds a clone).
#[derive(Debug, Clone)]
pub struct TxLimits {
    /// Streams this side sends at once per session
    /// (`limits.max_outgoing_transactions`, default 64): one more fails
    /// with [`TransferError::Limit`] and the peer gets an ERROR frame
    /// naming the limit.
    pub max_outgoing: usize,
    /// Streams the peer sends at once per session
    /// (`limits.max_incoming_transactions`, default 1024): one more gets
    /// an ERROR frame and a TX_CANCEL.
    pub max_incoming: usize,
    /// A transaction waiting on the peer this long is cancelled
    /// (`limits.transaction_idle_timeout_ms`, default 60 s): an outgoing
    /// PULL stream that gets no TX_FETCH (counted by its sender task,
    /// also while the session pauses reading), an incoming stream that gets
    /// no chunk while it is owed one (a PUSH stream; a PULL stream with a
    /// fetch outstanding; checked at heartbeat ticks, its clock restarting
    /// while the session does not read). The peer gets an ERROR frame
    /// naming the limit and a TX_CANCEL.
    pub idle_timeout: Duration,
    /// Spooled temporary files and their bytes, server-wide.
    pub spool: Arc<SpoolBudget>,
    /// Received stream bytes a session buffers for its readers and its
    /// relays before it stops reading its socket
    /// (`limits.max_receive_buffer_bytes`, default [`RX_BUFFER_LIMIT`]);
    /// each pause is counted in `camp_limits_hit_total`.
    pub max_receive_buffer: usize,
}

impl Default for TxLimits {
    fn default() -> TxLimits {
        TxLimits::new(64, 1024, Duration::from_secs(60), 256, 1 << 30)
    }
}

impl TxLimits {
    /// Limits with a new spool budget of `max_spool_files` files and
    /// `max_spooled_bytes` bytes.
    pub fn new(
        max_outgoing: usize,
        max_incoming: usize,
        idle_timeout: Duration,
        max_spool_files: usize,
        max_spooled_bytes: u64,
    ) -> TxLimits {
        TxLimits {
            max_outgoing,
            max_incoming,
            idle_timeout,
            spool: Arc::new(SpoolBudget::new(max_spool_files, max_spooled_bytes)),
            max_receive_buffer: RX_BUFFER_LIMIT,
        }
    }

    /// Checks the values (each at least 1).
    pub fn validate(&self) -> Result<(), String> {
        for (key, value) in [
            ("max_outgoing_transactions", self.max_outgoing as u64),
            ("max_incoming_transactions", self.max_incoming as u64),
            (
                "transaction_idle_timeout_ms",
                self.idle_timeout.as_millis() as u64,
            ),
            ("max_spool_files", self.spool.max_files() as u64),
            ("max_spooled_bytes", self.spool.max_bytes()),
            ("max_receive_buffer_bytes", self.max_receive_buffer as u64),
        ] {
            if value == 0 {
                return Err(format!("{key} must be at least 1"));
            }
        }
        Ok(())
    }
}

/// The temporary files that outgoing PULL streams from unseekable sources
/// are spooled to: how many are open and how many bytes they hold, against
/// `limits.max_spool_files` and `limits.max_spooled_bytes`. A stream over
/// either fails with [`TransferError::Limit`] before its TX_START, and
/// the peer gets an ERROR frame naming the limit.
#[derive(Debug)]
pub struct SpoolBudget {
    max_files: usize,
    max_bytes: u64,
    files: AtomicUsize,
    bytes: AtomicU64,
}

impl SpoolBudget {
    fn new(max_files: usize, max_bytes: u64) -> SpoolBudget {
        SpoolBudget {
            max_files,
            max_bytes,
            files: AtomicUsize::new(0),
            bytes: AtomicU64::new(0),
        }
    }

    /// Most spool files open at once.
    pub fn max_files(&self) -> usize {
        self.max_files
    }

    /// Most bytes spooled at once.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Spool files open now.
    pub fn files(&self) -> usize {
        self.files.load(Ordering::Acquire)
    }

    /// Bytes spooled now.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Acquire)
    }

    /// A file slot, or the error naming the limit.
    pub(crate) fn open(self: &Arc<Self>) -> Result<SpoolGuard, TransferError> {
        let taken = self
            .files
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_files).then_some(n + 1)
            });
        if taken.is_err() {
            return Err(TransferError::Limit(format!(
                "{} spool files are open (limits.max_spool_files)",
                self.max_files
            )));
        }
        Ok(SpoolGuard {
            budget: self.clone(),
            bytes: 0,
        })
    }
}

/// A spool file's place in the budget; released when dropped (with the
/// file).
#[derive(Debug)]
pub(crate) struct SpoolGuard {
    budget: Arc<SpoolBudget>,
    bytes: u64,
}

impl SpoolGuard {
    /// Counts `n` more bytes in the file, or the error naming the limit.
    pub(crate) fn grow(&mut self, n: u64) -> Result<(), TransferError> {
        let max = self.budget.max_bytes;
        let grown = self
            .budget
            .bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                b.checked_add(n).filter(|t| *t <= max)
            });
        if grown.is_err() {
            return Err(TransferError::Limit(format!(
                "spooled streams would exceed {max} bytes (limits.max_spooled_bytes)"
            )));
        }
        self.bytes += n;
        Ok(())
    }
}

impl Drop for SpoolGuard {
    fn drop(&mut self) {
        self.budget.bytes.fetch_sub(self.bytes, Ordering::AcqRel);
        self.budget.files.fetch_sub(1, Ordering::AcqRel);
    }
}

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
    /// A limit of [`TxLimits`] was reached (the message names its config
    /// key); the peer was told with an ERROR frame.
    #[error("limit reached: {0}")]
    Limit(String),
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
