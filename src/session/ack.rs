//! Tracking of ACK-tracked frames we sent: ids, round-trip time, timeouts.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::{DeliveryError, DeliveryTx};

/// How long an ACK-tracked frame may wait for its ACK before it counts as an
/// ack timeout (the reference's value).
pub const ACK_TIMEOUT: Duration = Duration::from_millis(2500);

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
/// Ids increase by one per tracked frame and wrap at `u32::MAX`. Pending
/// entries are kept in a map (ACKs may come in any order) plus a queue in
/// send order, so expiry looks only at the oldest entries.
pub(crate) struct AckTracker {
    /// The id the next tracked frame gets.
    next_id: u32,
    /// Frames not yet acknowledged, by id.
    pending: HashMap<u32, Pending>,
    /// Ids in send order with their send time; entries already acknowledged
    /// are skipped when they reach the front.
    order: VecDeque<(u32, Instant)>,
    /// Smoothed round-trip time in milliseconds; `None` before the first ACK.
    srtt_ms: Option<f64>,
    /// Frames that were never acknowledged within [`ACK_TIMEOUT`].
    timeouts: u64,
}

impl AckTracker {
    pub(crate) fn new() -> AckTracker {
        AckTracker {
            next_id: 0,
            pending: HashMap::new(),
            order: VecDeque::new(),
            srtt_ms: None,
            timeouts: 0,
        }
    }

    /// Takes the next ack id for a frame sent now.
    pub(crate) fn track(&mut self, now: Instant, notify: Option<DeliveryTx>) -> u32 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        if let Some(old) = self.pending.insert(
            id,
            Pending {
                sent_at: now,
                notify,
            },
        ) {
            // Only after 2^32 frames within one ack timeout; treat the old
            // entry as lost rather than confuse the two.
            if let Some(tx) = old.notify {
                let _ = tx.send(Err(DeliveryError::Timeout));
            }
        }
        self.order.push_back((id, now));
        id
    }

    /// Handles the peer's ACK for `id`; returns the round trip. `None` for
    /// an id we are not waiting for (a duplicate, or one that expired).
    pub(crate) fn ack(&mut self, id: u32, now: Instant) -> Option<Duration> {
        let p = self.pending.remove(&id)?;
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
        if let Some(p) = self.pending.remove(&id)
            && let Some(tx) = p.notify
        {
            let _ = tx.send(Err(why));
        }
    }

    /// Expires entries older than [`ACK_TIMEOUT`]; returns how many expired.
    pub(crate) fn expire(&mut self, now: Instant) -> u64 {
        let mut expired = 0;
        while let Some(&(id, sent_at)) = self.order.front() {
            match self.pending.get(&id) {
                Some(p) if p.sent_at == sent_at => {
                    if now.duration_since(sent_at) < ACK_TIMEOUT {
                        break;
                    }
                    let p = self.pending.remove(&id).expect("present");
                    if let Some(tx) = p.notify {
                        let _ = tx.send(Err(DeliveryError::Timeout));
                    }
                    expired += 1;
                }
                _ => {}
            }
            self.order.pop_front();
        }
        self.timeouts += expired;
        expired
    }

    /// When the oldest pending entry expires, if any is pending.
    pub(crate) fn next_deadline(&mut self) -> Option<Instant> {
        // Skip entries already acknowledged so the deadline is a real one.
        while let Some(&(id, sent_at)) = self.order.front() {
            if self.pending.get(&id).is_some_and(|p| p.sent_at == sent_at) {
                return Some(sent_at + ACK_TIMEOUT);
            }
            self.order.pop_front();
        }
        None
    }

    /// Fails every pending entry: the session is gone.
    pub(crate) fn close(&mut self) {
        for (_, p) in self.pending.drain() {
            if let Some(tx) = p.notify {
                let _ = tx.send(Err(DeliveryError::Closed));
            }
        }
        self.order.clear();
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
        t.next_id = u32::MAX - 1;
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
        assert_eq!((t.timeouts(), t.pending.len()), (2, 0));
        assert_eq!(t.ack(first, t0), None);
    }
}
