//! Tracking of ACK-tracked frames we sent: ids, round-trip time, timeouts.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::{DeliveryError, DeliveryTx};

/// How long an ACK-tracked frame may wait for its ACK before it counts as an
/// ack timeout (the reference's value).
pub const ACK_TIMEOUT: Duration = Duration::from_millis(2500);

/// Most frames that may wait for their ACK at once, per session. A peer
/// that reads but never ACKs would otherwise hold as many entries as can
/// be sent in [`ACK_TIMEOUT`]; beyond this the oldest is expired early
/// (an ack timeout, and `camp_limits_hit_total{limit="max_pending_acks"}`).
/// 65,536 entries are 1.5 MiB.
pub const MAX_PENDING_ACKS: usize = 65_536;

/// Smoothing factor of the round-trip EWMA (TCP's SRTT alpha).
const RTT_ALPHA: f64 = 0.2;

/// A frame waiting for its ACK.
struct Pending {
    /// When the frame was queued; the round trip is measured from here.
    sent_at: Instant,
    /// Who wants to know when (and whether) it was acknowledged.
    notify: Option<DeliveryTx>,
}

/// Assigns ack ids and resolves them when the peer's ACK arrives.
///
/// Ids increase by one per tracked frame and wrap at `u32::MAX`, so the
/// pending frames are a window of consecutive ids: they live in a ring
/// indexed by `id - first`, in send order. An ACK (in any order) is an
/// index; the oldest pending frame, whose deadline is the next one, is the
/// front; acknowledged slots are popped once they reach the front. No
/// hashing, and the next deadline is always at hand.
pub(crate) struct AckTracker {
    /// The id of `window[0]`.
    first: u32,
    /// Slot `i` is id `first + i`: `None` once acknowledged or forgotten.
    window: VecDeque<Option<Pending>>,
    /// Smoothed round-trip time in milliseconds; `None` before the first ACK.
    srtt_ms: Option<f64>,
    /// Frames that were never acknowledged within [`ACK_TIMEOUT`].
    timeouts: u64,
    /// Entries expired early at [`MAX_PENDING_ACKS`], not yet reported.
    evicted: u64,
}

impl AckTracker {
    pub(crate) fn new() -> AckTracker {
        AckTracker {
            first: 0,
            window: VecDeque::new(),
            srtt_ms: None,
            timeouts: 0,
            evicted: 0,
        }
    }

    /// The id the next tracked frame gets.
    fn next_id(&self) -> u32 {
        self.first.wrapping_add(self.window.len() as u32)
    }

    /// Takes the next ack id for a frame sent now.
    pub(crate) fn track(&mut self, now: Instant, notify: Option<DeliveryTx>) -> u32 {
        if self.window.len() >= MAX_PENDING_ACKS {
            // The oldest is treated as lost (the window of ids is what
            // the memory holds, acknowledged holes included).
            self.pop_front_expired();
            self.evicted += 1;
        }
        let id = self.next_id();
        self.window.push_back(Some(Pending {
            sent_at: now,
            notify,
        }));
        id
    }

    /// The slot of `id`, if it is within the window.
    fn slot(&mut self, id: u32) -> Option<&mut Option<Pending>> {
        let index = id.wrapping_sub(self.first) as usize;
        self.window.get_mut(index)
    }

    /// Drops resolved slots from the front.
    fn trim(&mut self) {
        while let Some(None) = self.window.front() {
            self.window.pop_front();
            self.first = self.first.wrapping_add(1);
        }
    }

    /// Handles the peer's ACK for `id`; returns the round trip. `None` for
    /// an id we are not waiting for (a duplicate, or one that expired).
    pub(crate) fn ack(&mut self, id: u32, now: Instant) -> Option<Duration> {
        let p = self.slot(id)?.take()?;
        self.trim();
        let rtt = now.duration_since(p.sent_at);
        let sample = rtt.as_secs_f64() * 1000.0;
        self.srtt_ms = Some(match self.srtt_ms {
            None => sample,
            Some(s) => (1.0 - RTT_ALPHA) * s + RTT_ALPHA * sample,
        });
        if let Some(tx) = p.notify {
            let _ = tx.send(Ok(rtt));
        }
        Some(rtt)
    }

    /// Forgets a frame that will never be sent (dropped from the queue),
    /// telling its sender why.
    pub(crate) fn forget(&mut self, id: u32, why: DeliveryError) {
        if let Some(p) = self.slot(id).and_then(Option::take) {
            self.trim();
            if let Some(tx) = p.notify {
                let _ = tx.send(Err(why));
            }
        }
    }

    /// Expires the front entry as a timeout.
    fn pop_front_expired(&mut self) {
        if let Some(Some(p)) = self.window.pop_front() {
            if let Some(tx) = p.notify {
                let _ = tx.send(Err(DeliveryError::Timeout));
            }
            self.timeouts += 1;
        }
        self.first = self.first.wrapping_add(1);
        self.trim();
    }

    /// Expires entries older than [`ACK_TIMEOUT`]; returns how many expired.
    pub(crate) fn expire(&mut self, now: Instant) -> u64 {
        let before = self.timeouts;
        while let Some(Some(p)) = self.window.front() {
            if now.duration_since(p.sent_at) < ACK_TIMEOUT {
                break;
            }
            self.pop_front_expired();
        }
        self.timeouts - before
    }

    /// When the oldest pending entry expires, if any is pending.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        match self.window.front() {
            Some(Some(p)) => Some(p.sent_at + ACK_TIMEOUT),
            _ => None,
        }
    }

    /// Lets go of the ring's capacity when nothing is pending.
    pub(crate) fn release(&mut self) {
        if self.window.is_empty() {
            self.window = VecDeque::new();
        }
    }

    /// Fails every pending entry: the session is gone.
    pub(crate) fn close(&mut self) {
        for p in self.window.drain(..).flatten() {
            if let Some(tx) = p.notify {
                let _ = tx.send(Err(DeliveryError::Closed));
            }
        }
    }

    /// Frames waiting for their ACK.
    #[cfg(test)]
    pub(crate) fn pending(&self) -> usize {
        self.window.iter().filter(|p| p.is_some()).count()
    }

    /// Entries expired early at [`MAX_PENDING_ACKS`] since the last call.
    pub(crate) fn take_evicted(&mut self) -> u64 {
        std::mem::take(&mut self.evicted)
    }

    pub(crate) fn srtt_ms(&self) -> Option<f64> {
        self.srtt_ms
    }

    pub(crate) fn timeouts(&self) -> u64 {
        self.timeouts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_increment_and_wrap() {
        let mut t = AckTracker::new();
        t.first = u32::MAX - 1;
        let now = Instant::now();
        assert_eq!(t.track(now, None), u32::MAX - 1);
        assert_eq!(t.track(now, None), u32::MAX);
        assert_eq!(t.track(now, None), 0);
        assert_eq!(t.track(now, None), 1);
    }

    #[test]
    fn rtt_is_an_ewma_with_alpha_0_2() {
        let mut t = AckTracker::new();
        let t0 = Instant::now();
        let a = t.track(t0, None);
        assert!(t.ack(a, t0 + Duration::from_millis(100)).is_some());
        assert_eq!(t.srtt_ms(), Some(100.0));
        let b = t.track(t0, None);
        assert!(t.ack(b, t0 + Duration::from_millis(200)).is_some());
        assert!((t.srtt_ms().unwrap() - 120.0).abs() < 1e-9);
        assert!(t.ack(b, t0).is_none(), "a duplicate ack is ignored");
    }

    #[test]
    fn entries_older_than_2_5_s_expire_and_count() {
        let mut t = AckTracker::new();
        let t0 = Instant::now();
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        let first = t.track(t0, Some(tx));
        let second = t.track(t0 + Duration::from_millis(1000), None);
        let third = t.track(t0 + Duration::from_millis(1500), None);
        t.ack(second, t0 + Duration::from_millis(1100));
        assert_eq!(t.next_deadline(), Some(t0 + ACK_TIMEOUT));
        assert_eq!(t.expire(t0 + Duration::from_millis(2499)), 0);
        assert_eq!(t.expire(t0 + Duration::from_millis(2500)), 1);
        assert_eq!(rx.try_recv().unwrap(), Err(DeliveryError::Timeout));
        assert_eq!(t.next_deadline(), Some(t0 + Duration::from_millis(4000)));
        assert_eq!(t.expire(t0 + Duration::from_millis(4000)), 1);
        assert!(t.ack(third, t0 + Duration::from_millis(4001)).is_none());
        assert_eq!((t.timeouts(), t.pending()), (2, 0));
        assert_eq!(t.ack(first, t0), None);
    }

    #[test]
    fn a_peer_that_never_acks_holds_at_most_max_pending_acks() {
        let mut t = AckTracker::new();
        let now = Instant::now();
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        t.track(now, Some(tx));
        for _ in 1..MAX_PENDING_ACKS + 10 {
            t.track(now, None);
        }
        assert_eq!(t.window.len(), MAX_PENDING_ACKS);
        assert_eq!((t.timeouts(), t.take_evicted()), (10, 10));
        assert_eq!(rx.try_recv().unwrap(), Err(DeliveryError::Timeout));
        assert_eq!(t.take_evicted(), 0);
    }
}
