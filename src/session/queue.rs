//! The per-session outgoing queue and its backpressure policy.
//!
//! The session task pushes encoded frames and drains them into the
//! WebSocket itself, in the same loop that reads; transaction sender tasks
//! push too, and wake it. When the peer reads slower than we send, frames pile up
//! here, and the caps of [`Backpressure`] decide what happens: data frames
//! (UTF-8, binary, error) are dropped by the [`DropPolicy`]; protocol frames
//! (ACK, PING, BYE, handshake) are never dropped; transaction frames are
//! never dropped and their senders wait for room instead.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use tokio::sync::Notify;

use crate::protocol::{Body, Frame, FrameType};

/// What to drop when the queue is full.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DropPolicy {
    /// Drop the oldest queued data frames to make room for the new one.
    #[default]
    DropOldest,
    /// Keep what is queued; drop the new frame.
    DropNewest,
    /// The newest message of a kind supersedes queued ones of the same kind
    /// (UTF-8, binary or error): drop queued messages of the new one's kind,
    /// oldest first, to make room; if there are none, drop the new one.
    DedupeLatest,
}

/// Backpressure settings of a session's outgoing queue.
///
/// The defaults are the reference server's. The reference applies its water
/// marks to Node's socket buffer; here the session's writing plays that part: it
/// takes at most `low_water_mark` bytes from the queue at a time, and hands
/// the socket at most `high_water_mark` bytes before it waits for them to be
/// flushed. The queue caps are exactly the reference's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(default, rename_all = "snake_case", deny_unknown_fields)]
pub struct Backpressure {
    /// Most bytes handed to the socket before the writer waits for a flush.
    pub high_water_mark: usize,
    /// Most bytes the writer takes from the queue at once.
    pub low_water_mark: usize,
    /// Most bytes of frames waiting in the queue.
    pub max_queued_bytes: usize,
    /// Most frames waiting in the queue.
    pub max_queue_count: usize,
    /// What goes when the queue is full.
    pub drop_policy: DropPolicy,
}

impl Default for Backpressure {
    fn default() -> Self {
        Backpressure {
            high_water_mark: 16 * 1024 * 1024,
            low_water_mark: 1024 * 1024,
            max_queued_bytes: 8 * 1024 * 1024,
            max_queue_count: 1024,
            drop_policy: DropPolicy::DropOldest,
        }
    }
}

impl DropPolicy {
    /// The policy's name, as in the configuration and the metrics.
    pub fn label(self) -> &'static str {
        match self {
            DropPolicy::DropOldest => "drop-oldest",
            DropPolicy::DropNewest => "drop-newest",
            DropPolicy::DedupeLatest => "dedupe-latest",
        }
    }
}

impl Backpressure {
    /// The reference's named profiles: `default`, `optimize_latency` (small
    /// buffers, newest data wins) and `optimize_memory` (small caps).
    pub fn profile(name: &str) -> Option<Backpressure> {
        let d = Backpressure::default();
        match name {
            "default" => Some(d),
            "optimize_latency" => Some(Backpressure {
                high_water_mark: 1024 * 1024,
                low_water_mark: 256 * 1024,
                max_queued_bytes: 2 * 1024 * 1024,
                max_queue_count: 256,
                drop_policy: DropPolicy::DedupeLatest,
            }),
            "optimize_memory" => Some(Backpressure {
                high_water_mark: 2 * 1024 * 1024,
                low_water_mark: 256 * 1024,
                max_queued_bytes: 1024 * 1024,
                max_queue_count: 128,
                drop_policy: DropPolicy::DropOldest,
            }),
            _ => None,
        }
    }

    /// Checks that the values make sense together.
    pub fn validate(&self) -> Result<(), String> {
        if self.low_water_mark > self.high_water_mark {
            return Err("low_water_mark must not exceed high_water_mark".into());
        }
        if self.max_queue_count == 0 || self.max_queued_bytes == 0 {
            return Err("max_queue_count and max_queued_bytes must be positive".into());
        }
        Ok(())
    }
}

/// How the queue treats a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// Protocol frames: never dropped, always admitted.
    Control,
    /// Application messages: dropped by the policy when the queue is full.
    Data,
    /// Transaction frames: never dropped; the sender waits for room.
    Transaction,
}

/// One thing for the writer to do.
pub(crate) enum Item {
    /// Send this encoded frame.
    Frame {
        /// The encoded frame.
        bytes: Bytes,
        /// Its frame type (for dedupe and metrics).
        ty: FrameType,
        /// Its class.
        class: Class,
        /// Its ack id, if tracked, so a drop can resolve the sender.
        ack: Option<u32>,
    },
    /// Send a WebSocket close frame and stop.
    Close {
        /// The close code.
        code: u16,
        /// The close reason.
        reason: String,
    },
}

impl Item {
    /// The one way from a frame body to queued bytes: stamps the session
    /// id, encodes, and keeps what the queue and the writer need to know.
    pub(crate) fn encode(sid: u64, body: Body, class: Class) -> Item {
        Item::Frame {
            ack: body.ack(),
            ty: body.frame_type(),
            bytes: Frame::new(sid, body).encode(),
            class,
        }
    }

    /// Encoded length (0 for a close).
    pub(crate) fn len(&self) -> usize {
        match self {
            Item::Frame { bytes, .. } => bytes.len(),
            Item::Close { .. } => 0,
        }
    }
}

/// A snapshot of a session's outgoing queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Bytes of frames waiting now.
    pub bytes: usize,
    /// Frames waiting now.
    pub frames: usize,
    /// The most bytes that ever waited at once: with data and transaction
    /// frames this stays within `max_queued_bytes` (protocol frames of a
    /// few dozen bytes are always admitted and may add to it).
    pub peak_bytes: usize,
    /// Data frames dropped by the policy so far.
    pub drops: u64,
}

/// The queue's contents and counters, behind the queue's lock.
#[derive(Default)]
struct State {
    /// Frames in send order.
    items: VecDeque<Item>,
    /// Sum of the frames' encoded lengths.
    bytes: usize,
    /// Highest `bytes` seen.
    peak_bytes: usize,
    /// No more pushes; the writer drains what is left.
    closed: bool,
    /// Data frames dropped by the policy.
    drops: u64,
    /// Someone waits for room (a sender task, a congested session): the
    /// next pop notifies [`Queue::room`].
    room_wanted: bool,
}

/// The queue shared by a session's task (producer and consumer) and its
/// transaction sender tasks (producers).
pub(crate) struct Queue {
    limits: Backpressure,
    state: Mutex<State>,
    /// Wakes the session's task when a sender task queued something (the
    /// session's own pushes need no wake: it writes in the same turn).
    readable: AtomicWaker,
    /// Wakes transaction senders (and a congested session) when writing
    /// made room.
    room: Notify,
    /// Whether the queue is at its caps ([`Queue::congested`]), kept up to
    /// date under the lock so the session reads it without locking.
    at_caps: AtomicBool,
    /// Whether items wait, kept like `at_caps`: the session's turns look
    /// here before taking the lock.
    filled: AtomicBool,
}

/// What a push did.
pub(crate) enum Pushed {
    /// Queued; these ack ids were dropped to make room.
    Queued(Vec<u32>),
    /// The new frame itself was dropped (its ack id, if any).
    Dropped(Option<u32>),
    /// The queue is closed (the writer stopped).
    Closed,
}

impl Queue {
    pub(crate) fn new(limits: Backpressure) -> Queue {
        Queue {
            limits,
            state: Mutex::new(State::default()),
            readable: AtomicWaker::new(),
            room: Notify::new(),
            at_caps: AtomicBool::new(false),
            filled: AtomicBool::new(false),
        }
    }

    pub(crate) fn limits(&self) -> &Backpressure {
        &self.limits
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn full(&self, s: &State, extra: usize) -> bool {
        s.items.len() + 1 > self.limits.max_queue_count
            || s.bytes + extra > self.limits.max_queued_bytes
    }

    /// Queues a control or data frame without waiting, applying the drop
    /// policy to data frames. Called by the session's task, which writes
    /// what it queued before it waits again.
    pub(crate) fn push(&self, item: Item) -> Pushed {
        let mut s = self.lock();
        if s.closed {
            return Pushed::Closed;
        }
        let len = item.len();
        let mut dropped = Vec::new();
        if let Item::Frame {
            class: Class::Data,
            ty,
            ack,
            ..
        } = &item
            && self.full(&s, len)
        {
            let evictable = |i: &Item, same_kind_only: bool| match i {
                Item::Frame {
                    class: Class::Data,
                    ty: t,
                    ..
                } => !same_kind_only || t == ty,
                _ => false,
            };
            let same_kind_only = match self.limits.drop_policy {
                DropPolicy::DropNewest => {
                    s.drops += 1;
                    return Pushed::Dropped(*ack);
                }
                DropPolicy::DropOldest => false,
                DropPolicy::DedupeLatest => true,
            };
            while self.full(&s, len) {
                let Some(pos) = s.items.iter().position(|i| evictable(i, same_kind_only)) else {
                    break;
                };
                let old = s.items.remove(pos).expect("position is valid");
                s.bytes -= old.len();
                s.drops += 1;
                if let Item::Frame { ack: Some(a), .. } = old {
                    dropped.push(a);
                }
            }
            if self.full(&s, len) {
                // Nothing left to evict (the queue holds only frames that
                // must not be dropped): the new data frame goes.
                self.note_level(&s);
                s.drops += 1;
                return Pushed::Dropped(*ack);
            }
        }
        s.bytes += len;
        s.peak_bytes = s.peak_bytes.max(s.bytes);
        s.items.push_back(item);
        self.note_level(&s);
        Pushed::Queued(dropped)
    }

    /// Queues a transaction frame, waiting until there is room for it.
    pub(crate) async fn push_wait(&self, item: Item) -> Result<(), ()> {
        let len = item.len();
        loop {
            let notified = self.room.notified();
            {
                let mut s = self.lock();
                if s.closed {
                    return Err(());
                }
                if !self.full(&s, len) || s.items.is_empty() {
                    s.bytes += len;
                    s.peak_bytes = s.peak_bytes.max(s.bytes);
                    s.items.push_back(item);
                    self.note_level(&s);
                    drop(s);
                    self.readable.wake();
                    return Ok(());
                }
                s.room_wanted = true;
            }
            notified.await;
        }
    }

    /// Takes queued items (at least one, at most about `low_water_mark`
    /// bytes) into `into`. `Ready(false)` once the queue is closed and
    /// empty; `Pending` (with `cx` woken by the next push from a sender
    /// task) while it is empty.
    pub(crate) fn poll_pop(&self, cx: &mut Context<'_>, into: &mut VecDeque<Item>) -> Poll<bool> {
        if self.pop(into) {
            return Poll::Ready(true);
        }
        self.readable.register(cx.waker());
        // A push between the first look and the registration.
        if self.pop(into) {
            return Poll::Ready(true);
        }
        if self.lock().closed {
            return Poll::Ready(false);
        }
        Poll::Pending
    }

    /// Whether anything is queued (without the lock).
    pub(crate) fn filled(&self) -> bool {
        self.filled.load(Ordering::Acquire)
    }

    /// Takes queued items like [`Queue::poll_pop`] if any wait, without
    /// registering for the next push (and without locking when none do).
    pub(crate) fn try_pop(&self, into: &mut VecDeque<Item>) -> bool {
        self.filled.load(Ordering::Acquire) && self.pop(into)
    }

    fn pop(&self, into: &mut VecDeque<Item>) -> bool {
        let mut s = self.lock();
        if s.items.is_empty() {
            return false;
        }
        let mut taken = 0;
        while let Some(item) = s.items.front() {
            if taken > 0 && taken + item.len() > self.limits.low_water_mark {
                break;
            }
            taken += item.len();
            into.push_back(s.items.pop_front().expect("front exists"));
        }
        s.bytes -= taken;
        self.note_level(&s);
        let wanted = std::mem::take(&mut s.room_wanted);
        drop(s);
        if wanted {
            self.room.notify_waiters();
        }
        true
    }

    /// Whether the peer is not keeping up: the queue holds `max_queue_count`
    /// frames or `max_queued_bytes` bytes. The session then stops reading
    /// from the peer (every frame read may queue a reply: an ACK, a PONG),
    /// so control frames stay bounded too.
    pub(crate) fn congested(&self) -> bool {
        self.at_caps.load(Ordering::Acquire)
    }

    /// Records whether the queue is at its caps (call with the lock held,
    /// after every change of its contents).
    fn note_level(&self, s: &State) {
        let at_caps =
            s.items.len() >= self.limits.max_queue_count || s.bytes >= self.limits.max_queued_bytes;
        self.at_caps.store(at_caps, Ordering::Release);
        self.filled.store(!s.items.is_empty(), Ordering::Release);
    }

    /// Waits until a congested queue drained to `low_water_mark` bytes and
    /// half of `max_queue_count` frames (or closed).
    pub(crate) async fn drained(&self) {
        loop {
            let notified = self.room.notified();
            {
                let mut s = self.lock();
                // Below the caps by a margin in any configuration (a
                // low-water mark at or above the cap would make this
                // complete while the queue is still at its caps).
                let low = self
                    .limits
                    .low_water_mark
                    .min(self.limits.max_queued_bytes / 2);
                if s.closed || (s.bytes <= low && s.items.len() <= self.limits.max_queue_count / 2)
                {
                    return;
                }
                s.room_wanted = true;
            }
            notified.await;
        }
    }

    /// Stops the queue: pushes fail from now on, waiting senders give up.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.readable.wake();
        self.room.notify_waiters();
    }

    /// Lets go of the capacity of an empty queue.
    pub(crate) fn trim(&self) {
        let mut s = self.lock();
        if s.items.is_empty() {
            s.items = VecDeque::new();
        }
    }

    /// Frames dropped by the policy so far.
    pub(crate) fn drops(&self) -> u64 {
        self.lock().drops
    }

    /// Bytes and frames waiting now, the peak and the drops.
    pub(crate) fn stats(&self) -> QueueStats {
        let s = self.lock();
        QueueStats {
            bytes: s.bytes,
            frames: s.items.len(),
            peak_bytes: s.peak_bytes,
            drops: s.drops,
        }
    }
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("limits", &self.limits)
            .field("stats", &self.stats())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    fn frame(len: usize, class: Class) -> Item {
        Item::Frame {
            bytes: Bytes::from(vec![0; len]),
            ty: match class {
                Class::Transaction => FrameType::TxChunk,
                _ => FrameType::Binary,
            },
            class,
            ack: None,
        }
    }

    fn small() -> Backpressure {
        Backpressure {
            max_queued_bytes: 100,
            max_queue_count: 10,
            ..Backpressure::default()
        }
    }

    #[tokio::test]
    async fn push_wait_waits_for_room_keeps_order_and_respects_the_cap() {
        let q = Arc::new(Queue::new(small()));
        q.push_wait(frame(60, Class::Transaction)).await.unwrap();
        // 60 + 60 > 100: the second waits until the writer takes the first.
        let waiting = tokio::spawn({
            let q = q.clone();
            async move { q.push_wait(frame(60, Class::Transaction)).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished());
        assert_eq!(q.stats().frames, 1);
        let mut batch = VecDeque::new();
        assert!(q.pop(&mut batch));
        assert_eq!(batch.len(), 1);
        waiting.await.unwrap().unwrap();
        assert_eq!(q.stats().frames, 1);
        assert!(q.stats().peak_bytes <= 100);
    }

    #[tokio::test]
    async fn push_wait_gives_up_when_the_queue_closes() {
        let q = Arc::new(Queue::new(small()));
        q.push_wait(frame(90, Class::Transaction)).await.unwrap();
        let waiting = tokio::spawn({
            let q = q.clone();
            async move { q.push_wait(frame(90, Class::Transaction)).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        q.close();
        assert!(waiting.await.unwrap().is_err());
    }

    #[tokio::test]
    async fn data_frames_never_evict_transaction_frames() {
        let q = Queue::new(small());
        q.push_wait(frame(50, Class::Transaction)).await.unwrap();
        assert!(matches!(q.push(frame(40, Class::Data)), Pushed::Queued(_)));
        // Full: drop-oldest evicts the data frame, not the chunk.
        assert!(matches!(q.push(frame(40, Class::Data)), Pushed::Queued(_)));
        assert_eq!(q.stats().drops, 1);
        // Nothing evictable is big enough: the new data frame goes.
        assert!(matches!(q.push(frame(60, Class::Data)), Pushed::Dropped(_)));
        let mut batch = VecDeque::new();
        q.pop(&mut batch);
        assert!(matches!(
            batch[0],
            Item::Frame {
                class: Class::Transaction,
                ..
            }
        ));
    }

    #[tokio::test]
    async fn drained_waits_below_the_caps_whatever_the_low_water_mark() {
        // A low-water mark above the cap (the default 1 MiB with a 100-byte
        // cap): drained() must still wait until the queue is well below
        // its caps, or a congested session would spin.
        let q = Arc::new(Queue::new(small()));
        q.push_wait(frame(60, Class::Transaction)).await.unwrap();
        q.push_wait(frame(40, Class::Transaction)).await.unwrap();
        assert!(q.congested());
        let waiting = tokio::spawn({
            let q = q.clone();
            async move { q.drained().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "drained while at the caps");
        let mut batch = VecDeque::new();
        assert!(q.pop(&mut batch));
        waiting.await.unwrap();
        assert!(q.stats().bytes <= 50);
    }
}
