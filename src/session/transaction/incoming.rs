//! The receiving side: readers of incoming streams and of requested
//! ranges, the session-wide receive budget, and the waiters for streams by
//! name.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::{Notify, mpsc, oneshot};

use super::state::{StreamKey, TxCommand};
use super::{FETCH_STEP, StreamOptions};
use crate::protocol::Behaviour;
use crate::session::{Command, CommandSender};

/// Bytes of received chunks waiting for readers, across a session.
#[derive(Debug)]
pub(crate) struct RxBudget {
    /// Bytes buffered now.
    used: AtomicUsize,
    /// The most bytes ever buffered at once.
    peak: AtomicUsize,
    /// Above this the session stops reading its socket.
    limit: usize,
    /// Wakes the session when readers made room.
    room: Notify,
}

impl RxBudget {
    pub(super) fn new(limit: usize) -> RxBudget {
        RxBudget {
            used: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            limit,
            room: Notify::new(),
        }
    }

    pub(super) fn add(&self, n: usize) {
        let used = self.used.fetch_add(n, Ordering::AcqRel) + n;
        self.peak.fetch_max(used, Ordering::Relaxed);
    }

    /// The most bytes ever buffered at once.
    pub(crate) fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    pub(super) fn release(&self, n: usize) {
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
pub(super) enum End {
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
pub(super) struct StreamEnd(pub(super) Mutex<End>);

impl StreamEnd {
    pub(super) fn set(&self, end: End) {
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
    pub(super) name: String,
    /// The announced size; `None` for an unknown-size PUSH.
    pub(super) size: Option<u64>,
    /// PUSH or PULL.
    pub(super) behaviour: Behaviour,
    /// Which transaction this is.
    pub(super) key: StreamKey,
    /// Chunks in order, from the session's task.
    pub(super) rx: mpsc::UnboundedReceiver<Bytes>,
    /// The rest of the chunk being read.
    pub(super) current: Bytes,
    /// Bytes handed to the application so far.
    pub(super) consumed: u64,
    /// PULL: end of the ranges requested for this reader so far.
    pub(super) requested: u64,
    /// How the transaction ended.
    pub(super) end: Arc<StreamEnd>,
    /// The session-wide receive buffer budget.
    pub(super) budget: Arc<RxBudget>,
    /// The session's task, for fetches and the cancel on drop.
    pub(super) commands: CommandSender,
    /// Reached EOF or an error: nothing to cancel on drop.
    pub(super) done: bool,
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

impl IncomingStream {
    /// Makes `current` hold the next bytes: `Ready(Ok(true))` when it
    /// does, `Ready(Ok(false))` at the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        loop {
            if !self.current.is_empty() {
                return Poll::Ready(Ok(true));
            }
            if self.done {
                return Poll::Ready(self.ended().map(|()| false));
            }
            if self.behaviour == Behaviour::Pull && Some(self.consumed) == self.size {
                self.done = true;
                return Poll::Ready(Ok(false));
            }
            self.request_window();
            match self.rx.poll_recv(cx) {
                // Still counted in the budget: released as it is consumed.
                Poll::Ready(Some(bytes)) => self.current = bytes,
                Poll::Ready(None) => return Poll::Ready(self.ended().map(|()| false)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// The next received bytes, at most `max` (≥ 1), without copying them;
    /// `None` at the end of the stream. The bytes stay counted in the
    /// receiving session's budget until the [`HeldChunk`] is dropped, so a
    /// relay that waits for room on its way out holds the peer back
    /// (`RX_BUFFER_LIMIT`) instead of buffering without bound.
    pub(super) fn poll_chunk(
        &mut self,
        cx: &mut Context<'_>,
        max: usize,
    ) -> Poll<io::Result<Option<HeldChunk>>> {
        match self.poll_fill(cx) {
            Poll::Ready(Ok(true)) => {
                let bytes = self.current.split_to(max.min(self.current.len()));
                self.consumed += bytes.len() as u64;
                Poll::Ready(Ok(Some(HeldChunk {
                    bytes,
                    budget: self.budget.clone(),
                })))
            }
            Poll::Ready(Ok(false)) => Poll::Ready(Ok(None)),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Bytes taken from an [`IncomingStream`] that still count against the
/// receiving session's budget; released when dropped.
pub(super) struct HeldChunk {
    /// The bytes (a view of the received frame: no copy).
    pub(super) bytes: Bytes,
    /// Where they are counted.
    budget: Arc<RxBudget>,
}

impl Drop for HeldChunk {
    fn drop(&mut self) {
        self.budget.release(self.bytes.len());
    }
}

impl AsyncRead for IncomingStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.poll_fill(cx) {
            Poll::Ready(Ok(true)) => {
                let n = copy_out(&mut this.current, buf);
                this.budget.release(n as usize);
                this.consumed += n;
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Ok(false)) => Poll::Ready(Ok(())),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for IncomingStream {
    fn drop(&mut self) {
        self.budget.release(self.current.len());
        drain(&mut self.rx, &self.budget);
        if !self.done {
            let _ = self
                .commands
                .send(Command::Tx(TxCommand::CancelIncoming { key: self.key }));
        }
    }
}

/// Moves as much of `current` into `buf` as fits; returns how many bytes.
fn copy_out(current: &mut Bytes, buf: &mut ReadBuf<'_>) -> u64 {
    let n = current.len().min(buf.remaining());
    buf.put_slice(&current.split_to(n));
    n as u64
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
                this.remaining -= copy_out(&mut this.current, buf);
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

/// Why [`Session::wait_for_stream`](crate::session::Session::wait_for_stream) gave
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
