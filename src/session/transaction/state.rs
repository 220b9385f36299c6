//! The session task's side: the per-session table of open transactions,
//! the requests it handles and the effects it reports.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::incoming::{End, IncomingStream, RxBudget, StreamEnd};
use super::sender::{CancelSignal, Link, Source, run_sender};
use super::{ANONYMOUS, ENDED_MEMORY, MAX_PENDING_FETCHES, StreamOptions, TransferError, TxLimits};
use crate::metrics::Metrics;
use crate::protocol::{self, Behaviour, Body};
use crate::session::ack::AckTracker;
use crate::session::queue::{Class, Item, Queue};
use crate::session::{Command, CommandSender, DeliveryError, DeliveryTx};

/// Identifies one incoming transaction across id reuse: the peer's tx id
/// plus a serial unique within the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StreamKey {
    /// The peer's transaction id.
    pub(super) tx_id: u32,
    /// Our serial for this incarnation of the id.
    pub(super) serial: u64,
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
    /// PUSH: chunks received so far.
    chunks: u64,
    /// The reader's channel.
    main: mpsc::UnboundedSender<Bytes>,
    /// PULL: requested ranges in request order.
    ranges: VecDeque<Range>,
    /// How it ended, for the readers.
    end: Arc<StreamEnd>,
    /// When the peer last sent a frame for it, or when we started waiting
    /// for one (the idle timeout counts from there).
    last_heard: std::time::Instant,
}

/// What the session's task must do after a transaction frame.
pub(crate) enum TxEffect {
    /// A deviation the reference server accepts was accepted: count it.
    Tolerated(crate::metrics::Tolerated, String),
    /// Count the frame as malformed input (ERROR; 4001 after too many).
    Malformed(String),
    /// Hand a new stream to the application.
    Announce(IncomingStream),
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
    /// The session's command channel (sender tasks and readers talk to the
    /// session's task through it).
    commands: CommandSender,
    /// Accept the PUSH chunk offsets the reference clients write (not
    /// strict).
    lenient: bool,
    /// Transactions we send, by our id.
    outgoing: HashMap<u32, Outgoing>,
    /// Transactions we receive, by the peer's id.
    incoming: HashMap<u32, Incoming>,
    /// Recently ended incoming ids, oldest first.
    ended: VecDeque<u32>,
    /// Receive buffer budget shared with the readers.
    budget: Arc<RxBudget>,
    /// Limits on transactions.
    limits: TxLimits,
    /// Where limit hits are counted.
    metrics: Arc<Metrics>,
}

impl Transactions {
    /// `even_ids` for the server end, odd ids for the client end.
    pub(crate) fn new(
        sid: u64,
        queue: Arc<Queue>,
        even_ids: bool,
        lenient: bool,
        commands: CommandSender,
        limits: TxLimits,
        metrics: Arc<Metrics>,
    ) -> Transactions {
        Transactions {
            sid,
            queue,
            next_id: if even_ids { 0 } else { 1 },
            serial: 0,
            commands,
            lenient,
            outgoing: HashMap::new(),
            incoming: HashMap::new(),
            ended: VecDeque::new(),
            budget: Arc::new(RxBudget::new(limits.max_receive_buffer)),
            limits,
            metrics,
        }
    }

    /// Cancels incoming transactions idle for longer than the limit while
    /// owed data by the peer (a PUSH stream, a PULL stream with a fetch
    /// outstanding): ERROR naming the limit and TX_CANCEL to the peer, an
    /// error to the reader. The session calls it at every heartbeat tick;
    /// while it is not `reading` its socket (its own readers or application
    /// behind) the peer's silence is ours, and the clocks restart instead.
    pub(crate) fn expire_idle(
        &mut self,
        acks: &mut AckTracker,
        now: std::time::Instant,
        reading: bool,
    ) {
        if !reading {
            for inc in self.incoming.values_mut() {
                inc.last_heard = now;
            }
            return;
        }
        let idle = self.limits.idle_timeout;
        let expired: Vec<u32> = self
            .incoming
            .iter()
            .filter(|(_, inc)| inc.behaviour == Behaviour::Push || !inc.ranges.is_empty())
            .filter(|(_, inc)| now.saturating_duration_since(inc.last_heard) >= idle)
            .map(|(id, _)| *id)
            .collect();
        for tx_id in expired {
            self.metrics.limit_hit("transaction_idle_timeout_ms");
            let why = format!(
                "nothing received for {} ms (limits.transaction_idle_timeout_ms); cancelled",
                idle.as_millis()
            );
            self.fail_incoming(acks, tx_id, why);
        }
    }

    /// The receive budget, so the task can pause reading.
    pub(crate) fn budget(&self) -> &Arc<RxBudget> {
        &self.budget
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
        let _ = self.queue.push(Item::encode(self.sid, body, class));
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
        if self.incoming.len() >= self.limits.max_incoming {
            self.metrics.limit_hit("max_incoming_transactions");
            self.error(
                acks,
                format!(
                    "transaction {tx_id}: more than {} open incoming transactions (limits.max_incoming_transactions); cancelled",
                    self.limits.max_incoming
                ),
            );
            self.send(acks, Body::TxCancel { ack: 0, tx_id });
            return None;
        }
        let commands = self.commands.clone();
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
                chunks: 0,
                main,
                ranges: VecDeque::new(),
                end: end.clone(),
                last_heard: std::time::Instant::now(),
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
        inc.last_heard = std::time::Instant::now();
        let len = data.len() as u64;
        // PUSH chunks are appended in arrival order; the offset only
        // checks that order. Not strict, the two ways the reference clients
        // get it wrong are accepted (the reference server ignores offsets):
        // the Node client writes chunk k at its true position + k, the
        // browser client writes the chunk's end. Anything else (a real gap,
        // an overlap) is refused as before.
        let mut tolerated = None;
        let offset = if inc.behaviour == Behaviour::Push
            && offset != inc.next
            && self.lenient
            && (offset == inc.next.saturating_add(inc.chunks)
                || offset == inc.next.saturating_add(len))
        {
            tolerated = Some(format!(
                "PUSH chunk {} of transaction {tx_id} at offset {offset}, true position {}",
                inc.chunks, inc.next
            ));
            inc.next
        } else {
            offset
        };
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
                inc.chunks += 1;
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
        tolerated.map(|what| TxEffect::Tolerated(crate::metrics::Tolerated::PushOffset, what))
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
            } => self.start(acks, source, options, result, cancel, peer_features),
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
                if inc.ranges.is_empty() {
                    // The peer owes us data from now on.
                    inc.last_heard = std::time::Instant::now();
                }
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
        acks: &mut AckTracker,
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
        let commands = self.commands.clone();
        if self.outgoing.len() >= self.limits.max_outgoing {
            self.metrics.limit_hit("max_outgoing_transactions");
            let why = format!(
                "{} streams are being sent on this session (limits.max_outgoing_transactions)",
                self.limits.max_outgoing
            );
            self.error(acks, format!("stream {:?} not sent: {why}", options.name));
            let _ = result.send(Err(TransferError::Limit(why)));
            return;
        }
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
            limits: self.limits.clone(),
            metrics: self.metrics.clone(),
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
