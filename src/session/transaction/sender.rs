//! The sending side: the sender task that runs one outgoing transaction
//! (PUSH, PULL, spooling) and what it needs from its session.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeek, AsyncSeekExt, AsyncWriteExt};
use tokio::sync::{Notify, mpsc, oneshot};

use super::incoming::{HeldChunk, IncomingStream};
use super::state::TxCommand;
use super::{StreamOptions, TransferError};
use crate::protocol::{self, Behaviour, Body};
use crate::session::queue::{Class, Item, Queue};
use crate::session::{Command, CommandSender, DeliveryError, DeliveryTx};

/// Stops a sender task; remembers whether the peer or we asked.
#[derive(Debug, Default)]
pub(crate) struct CancelSignal {
    /// Wakes the sender task (a stored permit, so no wakeup is lost).
    notify: Notify,
    /// Whether the peer's TX_CANCEL fired it.
    by_peer: AtomicBool,
}

impl CancelSignal {
    pub(super) fn fire(&self, by_peer: bool) {
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
    /// A stream being received, relayed: PUSH passes its chunks on without
    /// copying them, each counted in the receiving session's budget until
    /// it is queued here; PULL spools it like a reader.
    Incoming(Box<IncomingStream>),
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::Reader(_) => "Source::Reader",
            Source::Seekable(_) => "Source::Seekable",
            Source::Incoming(_) => "Source::Incoming",
        })
    }
}

/// What the sender tasks need from their session.
#[derive(Clone)]
pub(super) struct Link {
    /// Stamped on every frame.
    pub(super) sid: u64,
    /// Where frames go (with `push_wait`).
    pub(super) queue: Arc<Queue>,
    /// The session's task, for ack ids and the end notice.
    pub(super) commands: CommandSender,
    /// Largest chunk payload: 1 MiB, or less when the queue cap is small,
    /// so that one chunk always fits the queue.
    pub(super) chunk_size: usize,
    /// Idle timeout and spool budget.
    pub(super) limits: super::TxLimits,
    /// Where limit hits are counted.
    pub(super) metrics: Arc<crate::metrics::Metrics>,
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
        self.queue
            .push_wait(Item::encode(self.sid, body, Class::Transaction))
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
pub(super) async fn run_sender(
    link: &Link,
    tx_id: u32,
    source: Source,
    options: StreamOptions,
    mut fetches: mpsc::Receiver<(u64, u64)>,
    cancel: &CancelSignal,
) -> Result<u64, TransferError> {
    // Whether TX_START was queued (a TX_CANCEL means something then).
    let started = AtomicBool::new(false);
    let work = async {
        match options.behaviour {
            Behaviour::Push => push(link, tx_id, source, &options, &started).await,
            Behaviour::Pull => pull(link, tx_id, source, &options, &mut fetches, &started).await,
        }
    };
    let outcome = tokio::select! {
        outcome = work => outcome,
        why = cancel.fired() => Err(why),
    };
    let started = started.load(Ordering::Acquire);
    if let Err(TransferError::Limit(why)) = &outcome {
        let message = if started {
            format!("transaction {tx_id}: {why}")
        } else {
            format!("stream {:?} not sent: {why}", options.name)
        };
        let _ = link
            .send_tracked(Body::Error { ack: 0, message }, None)
            .await;
    }
    let tell_peer = matches!(
        outcome,
        Err(TransferError::Cancelled
            | TransferError::Source(_)
            | TransferError::SourceEnded { .. }
            | TransferError::Protocol(_)
            | TransferError::Limit(_))
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

/// What PUSH reads its chunks from.
enum Chunks {
    /// Read into a new buffer per chunk.
    Reader(Pin<Box<dyn AsyncRead + Send>>),
    /// Taken as received, still counted where they were received.
    Relay(Box<IncomingStream>),
}

impl Chunks {
    /// The next chunk of at most `want` bytes (`None` at the end), and
    /// what to hold until it is queued.
    async fn next(&mut self, want: usize) -> io::Result<Option<(Bytes, Option<HeldChunk>)>> {
        match self {
            Chunks::Reader(reader) => {
                let mut buf = BytesMut::with_capacity(want);
                let n = reader.take(want as u64).read_buf(&mut buf).await?;
                Ok((n > 0).then(|| (buf.freeze(), None)))
            }
            Chunks::Relay(stream) => {
                let held = std::future::poll_fn(|cx| stream.poll_chunk(cx, want)).await?;
                Ok(held.map(|held| (held.bytes.clone(), Some(held))))
            }
        }
    }
}

/// PUSH: chunks in order from the source, then TX_FINISH.
async fn push(
    link: &Link,
    tx_id: u32,
    source: Source,
    options: &StreamOptions,
    started: &AtomicBool,
) -> Result<u64, TransferError> {
    let mut chunks = match source {
        Source::Reader(r) => Chunks::Reader(r),
        Source::Seekable(mut s) => {
            s.seek(io::SeekFrom::Start(0))
                .await
                .map_err(TransferError::Source)?;
            Chunks::Reader(Box::pin(s))
        }
        Source::Incoming(stream) => Chunks::Relay(stream),
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
    started.store(true, Ordering::Release);
    let mut offset = 0u64;
    loop {
        let want = match options.size {
            Some(size) => (size - offset).min(link.chunk_size as u64) as usize,
            None => link.chunk_size,
        };
        if want == 0 {
            break;
        }
        let Some((data, held)) = chunks.next(want).await.map_err(TransferError::Source)? else {
            if let Some(size) = options.size {
                return Err(TransferError::SourceEnded { sent: offset, size });
            }
            break;
        };
        let n = data.len() as u64;
        link.send(Body::TxChunk {
            tx_id,
            offset,
            data,
        })
        .await?;
        // Queued (copied into its frame): the receive budget may let the
        // peer send more.
        drop(held);
        offset += n;
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
    started: &AtomicBool,
) -> Result<u64, TransferError> {
    // Held as long as the spool file is open.
    let (mut file, size, _spooled) = match source {
        Source::Seekable(mut s) => {
            let len = s
                .seek(io::SeekFrom::End(0))
                .await
                .map_err(TransferError::Source)?;
            (s, len, None)
        }
        Source::Reader(r) => spool(link, r).await?,
        // A relayed stream is spooled like any reader: its size is known
        // only at its end.
        Source::Incoming(stream) => spool(link, Box::into_pin(stream)).await?,
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
    started.store(true, Ordering::Release);
    let idle = link.limits.idle_timeout;
    let mut served = Coverage::default();
    loop {
        let next = if served.covers(size) {
            match fetches.try_recv() {
                Ok(range) => Some(range),
                Err(mpsc::error::TryRecvError::Empty) => None,
                Err(mpsc::error::TryRecvError::Disconnected) => return Err(TransferError::Closed),
            }
        } else {
            // The peer owes us a TX_FETCH: at most the idle timeout.
            match tokio::time::timeout(idle, fetches.recv()).await {
                Ok(range) => Some(range.ok_or(TransferError::Closed)?),
                Err(_) => {
                    link.metrics.limit_hit("transaction_idle_timeout_ms");
                    return Err(TransferError::Limit(format!(
                        "no TX_FETCH for {} ms (limits.transaction_idle_timeout_ms); cancelled",
                        idle.as_millis()
                    )));
                }
            }
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

/// Spools a non-seekable source (see [`spool_to_file`]), counting a
/// refusal by the spool budget under the limit it hit.
async fn spool(
    link: &Link,
    reader: Pin<Box<dyn AsyncRead + Send>>,
) -> Result<(Pin<Box<dyn ReadSeek>>, u64, Option<super::SpoolGuard>), TransferError> {
    let spooled = spool_to_file(reader, &link.limits.spool).await;
    if let Err(TransferError::Limit(why)) = &spooled {
        link.metrics.limit_hit(if why.contains("max_spool_files") {
            "max_spool_files"
        } else {
            "max_spooled_bytes"
        });
    }
    let (file, len, guard) = spooled?;
    Ok((file, len, Some(guard)))
}

/// Copies a non-seekable source into an anonymous temporary file (unlinked
/// on creation: it disappears with the last handle) and returns the file,
/// its length and its place in the spool budget (files and bytes,
/// server-wide), which it must not outgrow.
async fn spool_to_file(
    mut reader: Pin<Box<dyn AsyncRead + Send>>,
    budget: &Arc<super::SpoolBudget>,
) -> Result<(Pin<Box<dyn ReadSeek>>, u64, super::SpoolGuard), TransferError> {
    let mut guard = budget.open()?;
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
        guard.grow(n as u64)?;
        file.write_all(&buf).await.map_err(TransferError::Source)?;
        total += n as u64;
    }
    file.flush().await.map_err(TransferError::Source)?;
    Ok((Box::pin(file), total, guard))
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
