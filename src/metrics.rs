//! Counters and histograms of a server, rendered in the Prometheus text
//! format by the admin listener.
//!
//! Everything is a relaxed atomic: sessions on every core count into the
//! same [`Metrics`] without locks. Transactions are counted by their
//! frames: `camp_frames_{in,out}_total{type="TX_START"}` (started),
//! `TX_FINISH` (finished) and `TX_CANCEL` (cancelled), per direction.

use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use crate::protocol::FrameType;

/// A histogram with fixed upper bounds (in seconds), Prometheus style.
#[derive(Debug)]
pub struct Histogram {
    /// Upper bounds of the buckets, ascending, in seconds.
    bounds: &'static [f64],
    /// Observations per bucket (not cumulative); the last is +Inf.
    counts: Vec<AtomicU64>,
    /// Sum of all observations in nanoseconds.
    sum_nanos: AtomicU64,
}

impl Histogram {
    /// A histogram with these upper bounds in seconds.
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn observe(&self, value: Duration) {
        self.counts[self.bucket(value)].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos
            .fetch_add(value.as_nanos() as u64, Ordering::Relaxed);
    }

    /// The bucket `value` falls in.
    fn bucket(&self, value: Duration) -> usize {
        let secs = value.as_secs_f64();
        self.bounds
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(self.bounds.len())
    }

    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Writes the buckets, sum and count of `name` with `labels`.
    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (i, bound) in self.bounds.iter().enumerate() {
            cumulative += self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}"
            );
        }
        cumulative += self.counts[self.bounds.len()].load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cumulative}"
        );
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {cumulative}");
    }
}

/// Bounds of the ack round-trip histogram (100 µs to 2.5 s).
pub const RTT_BOUNDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Bounds of the hook latency histogram (250 ns to 10 ms).
pub const HOOK_BOUNDS: &[f64] = &[
    0.00000025, 0.0000005, 0.000001, 0.0000025, 0.000005, 0.00001, 0.000025, 0.0001, 0.001, 0.01,
];

/// `t` as RFC 3339 UTC with milliseconds (`2026-11-29T10:03:10.123Z`,
/// always 24 characters): the one time format of the admin view.
pub fn rfc3339(t: std::time::SystemTime) -> String {
    let t = time::OffsetDateTime::from(t);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// A deviation from CAMP v1 that the reference server accepts and so do
/// we, unless the protocol's `strict` option is set
/// (`shared/CAMP-PROTOCOL.md`, "The published reference clients").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tolerated {
    /// Data arrived after the peer ACKed our ENDPOINT_INFO without sending
    /// its own (the browser client): an implicit handshake.
    ImplicitHandshake,
    /// A PUSH chunk's offset was off the way the reference clients write it
    /// (the Node client's `start + k`, the browser client's end offset);
    /// appended in arrival order.
    PushOffset,
    /// A frame carried another sid than the connection's session (the Node
    /// client given a sid in its URL): handled for the connection's session.
    ForeignSid,
    /// The session id came as `x-cryo-sid`, the protocol's former name (the
    /// stock Node client).
    LegacySidParam,
    /// `x-camp-sid` came more than once with different values: the first
    /// is used, as the reference's `URLSearchParams.get` does.
    RepeatedSidParam,
}

impl Tolerated {
    /// Every kind, in label order.
    pub const ALL: [Tolerated; 5] = [
        Tolerated::ImplicitHandshake,
        Tolerated::PushOffset,
        Tolerated::ForeignSid,
        Tolerated::LegacySidParam,
        Tolerated::RepeatedSidParam,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Tolerated::ImplicitHandshake => "implicit_handshake",
            Tolerated::PushOffset => "push_offset",
            Tolerated::ForeignSid => "foreign_sid",
            Tolerated::LegacySidParam => "legacy_sid_param",
            Tolerated::RepeatedSidParam => "repeated_sid_param",
        }
    }
}

/// A server's counters.
#[derive(Debug)]
pub struct Metrics {
    /// Sessions open now.
    pub sessions_open: AtomicI64,
    /// Sessions that completed their handshake since start.
    pub sessions_total: AtomicU64,
    /// Upgrade refusals by reason label.
    refused: Mutex<Vec<(&'static str, u64)>>,
    /// Frames received, by type (index: [`frame_index`]).
    frames_in: [AtomicU64; 12],
    /// Frames sent, by type.
    frames_out: [AtomicU64; 12],
    /// Bytes of frames received, by type.
    bytes_in: [AtomicU64; 12],
    /// Bytes of frames sent, by type.
    bytes_out: [AtomicU64; 12],
    /// Malformed frames received.
    pub malformed: AtomicU64,
    /// Ack round-trip times.
    pub ack_rtt: Histogram,
    /// Tracked frames never acknowledged within 2.5 s.
    pub ack_timeouts: AtomicU64,
    /// Flushes of the sessions' WebSockets that put frames on the wire
    /// (added to the shared count at the session's next flush or end).
    pub socket_flushes: AtomicU64,
    /// Data frames dropped by the backpressure policy, by policy.
    queue_drops: [AtomicU64; 3],
    /// Tolerated protocol deviations, by [`Tolerated`] kind.
    tolerated: [AtomicU64; Tolerated::ALL.len()],
    /// Limits reached inside sessions, by config key.
    limits_hit: Mutex<Vec<(&'static str, u64)>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            sessions_open: AtomicI64::new(0),
            sessions_total: AtomicU64::new(0),
            refused: Mutex::new(Vec::new()),
            frames_in: Default::default(),
            frames_out: Default::default(),
            bytes_in: Default::default(),
            bytes_out: Default::default(),
            malformed: AtomicU64::new(0),
            ack_rtt: Histogram::new(RTT_BOUNDS),
            ack_timeouts: AtomicU64::new(0),
            socket_flushes: AtomicU64::new(0),
            queue_drops: Default::default(),
            tolerated: Default::default(),
            limits_hit: Mutex::new(Vec::new()),
        }
    }
}

/// The position of a frame type in the per-type counters.
fn frame_index(ty: FrameType) -> usize {
    match ty as u8 {
        b @ 0x00..=0x04 => b as usize,
        b => 5 + (b - 0xf9) as usize,
    }
}

/// The drop policies' names (the session's `DropPolicy::label`), the
/// label values of `camp_queue_drops_total`.
pub const DROP_POLICIES: [&str; 3] = ["drop-oldest", "drop-newest", "dedupe-latest"];

fn policy_index(label: &str) -> Option<usize> {
    DROP_POLICIES.iter().position(|p| *p == label)
}

impl Metrics {
    /// Counts a received frame.
    pub fn frame_in(&self, ty: FrameType, len: usize) {
        let i = frame_index(ty);
        self.frames_in[i].fetch_add(1, Ordering::Relaxed);
        self.bytes_in[i].fetch_add(len as u64, Ordering::Relaxed);
    }

    /// Counts a sent frame.
    pub fn frame_out(&self, ty: FrameType, len: usize) {
        let i = frame_index(ty);
        self.frames_out[i].fetch_add(1, Ordering::Relaxed);
        self.bytes_out[i].fetch_add(len as u64, Ordering::Relaxed);
    }

    /// Frames received of a type.
    pub fn frames_in(&self, ty: FrameType) -> u64 {
        self.frames_in[frame_index(ty)].load(Ordering::Relaxed)
    }

    /// Frames sent of a type.
    pub fn frames_out(&self, ty: FrameType) -> u64 {
        self.frames_out[frame_index(ty)].load(Ordering::Relaxed)
    }

    /// Counts a refused upgrade.
    pub fn refused(&self, reason: &'static str) {
        let mut r = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        match r.iter_mut().find(|(k, _)| *k == reason) {
            Some((_, n)) => *n += 1,
            None => r.push((reason, 1)),
        }
    }

    /// Refusals counted for a reason.
    pub fn refusals(&self, reason: &str) -> u64 {
        let r = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        r.iter().find(|(k, _)| *k == reason).map_or(0, |(_, n)| *n)
    }

    /// Counts frames dropped by the policy called `policy` (one of
    /// [`DROP_POLICIES`]).
    pub fn queue_dropped(&self, policy: &str, n: u64) {
        if let Some(i) = policy_index(policy) {
            self.queue_drops[i].fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Counts a limit reached inside a session (`limit`: its config key).
    pub fn limit_hit(&self, limit: &'static str) {
        self.limit_hits_add(limit, 1);
    }

    /// Counts `n` times a limit was reached inside a session.
    pub fn limit_hits_add(&self, limit: &'static str, n: u64) {
        let mut r = self.limits_hit.lock().unwrap_or_else(|e| e.into_inner());
        match r.iter_mut().find(|(k, _)| *k == limit) {
            Some((_, count)) => *count += n,
            None => r.push((limit, n)),
        }
    }

    /// Times `limit` was reached.
    pub fn limit_hits(&self, limit: &str) -> u64 {
        let r = self.limits_hit.lock().unwrap_or_else(|e| e.into_inner());
        r.iter().find(|(k, _)| *k == limit).map_or(0, |(_, n)| *n)
    }

    /// Counts one tolerated deviation.
    pub fn tolerated(&self, kind: Tolerated) {
        self.tolerated[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Tolerated deviations of `kind` so far.
    pub fn tolerated_count(&self, kind: Tolerated) -> u64 {
        self.tolerated[kind as usize].load(Ordering::Relaxed)
    }

    /// Refusals so far, by reason.
    pub fn refusal_counts(&self) -> Vec<(&'static str, u64)> {
        self.refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Limits reached inside sessions so far, by config key.
    pub fn limit_hit_counts(&self) -> Vec<(&'static str, u64)> {
        self.limits_hit
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Bytes of frames received of a type.
    pub fn bytes_in(&self, ty: FrameType) -> u64 {
        self.bytes_in[frame_index(ty)].load(Ordering::Relaxed)
    }

    /// Bytes of frames sent of a type.
    pub fn bytes_out(&self, ty: FrameType) -> u64 {
        self.bytes_out[frame_index(ty)].load(Ordering::Relaxed)
    }

    /// Data frames dropped by the policy called `policy` (one of
    /// [`DROP_POLICIES`]).
    pub fn queue_drops(&self, policy: &str) -> u64 {
        policy_index(policy).map_or(0, |i| self.queue_drops[i].load(Ordering::Relaxed))
    }
}

/// Counts kept by one session's task and added to the shared [`Metrics`]
/// in batches (each time the session flushes its socket, and when it
/// ends): per-frame atomic additions on counters that every core shares
/// made their cache lines travel between cores on every frame.
#[derive(Debug, Default)]
pub struct Tally {
    // 32 bits: flushed at least once per socket flush, which is at most
    // `high_water_mark` bytes after the previous one.
    frames_in: [u32; 12],
    bytes_in: [u32; 12],
    frames_out: [u32; 12],
    bytes_out: [u32; 12],
    /// Ack round trips not yet added: bucket counts and the sum.
    rtt_counts: Vec<u64>,
    rtt_sum_nanos: u64,
    /// Flushes that put frames on the wire.
    flushes: u32,
    /// Whether anything waits to be added.
    dirty: bool,
}

impl Tally {
    /// Counts a received frame.
    pub fn frame_in(&mut self, ty: FrameType, len: usize) {
        let i = frame_index(ty);
        self.frames_in[i] = self.frames_in[i].saturating_add(1);
        self.bytes_in[i] = self.bytes_in[i].saturating_add(len as u32);
        self.dirty = true;
    }

    /// Counts a sent frame.
    pub fn frame_out(&mut self, ty: FrameType, len: usize) {
        let i = frame_index(ty);
        self.frames_out[i] = self.frames_out[i].saturating_add(1);
        self.bytes_out[i] = self.bytes_out[i].saturating_add(len as u32);
        self.dirty = true;
    }

    /// Counts a flush of the socket that put frames on the wire.
    pub fn socket_flush(&mut self) {
        self.flushes = self.flushes.saturating_add(1);
        self.dirty = true;
    }

    /// Records an ack round trip (for `metrics.ack_rtt`).
    pub fn ack_rtt(&mut self, metrics: &Metrics, rtt: Duration) {
        if self.rtt_counts.is_empty() {
            self.rtt_counts = vec![0; metrics.ack_rtt.counts.len()];
        }
        self.rtt_counts[metrics.ack_rtt.bucket(rtt)] += 1;
        self.rtt_sum_nanos += rtt.as_nanos() as u64;
        self.dirty = true;
    }

    /// Adds everything counted so far to `metrics`.
    pub fn flush(&mut self, metrics: &Metrics) {
        if !std::mem::take(&mut self.dirty) {
            return;
        }
        fn add<N: Copy + Default + PartialEq + Into<u64>>(shared: &[AtomicU64], local: &mut [N]) {
            for (a, n) in shared.iter().zip(local.iter_mut()) {
                if *n != N::default() {
                    a.fetch_add(std::mem::take(n).into(), Ordering::Relaxed);
                }
            }
        }
        add(&metrics.frames_in, &mut self.frames_in);
        add(&metrics.bytes_in, &mut self.bytes_in);
        add(&metrics.frames_out, &mut self.frames_out);
        add(&metrics.bytes_out, &mut self.bytes_out);
        metrics
            .socket_flushes
            .fetch_add(std::mem::take(&mut self.flushes).into(), Ordering::Relaxed);
        if !self.rtt_counts.is_empty() {
            add(&metrics.ack_rtt.counts, &mut self.rtt_counts);
            metrics
                .ack_rtt
                .sum_nanos
                .fetch_add(std::mem::take(&mut self.rtt_sum_nanos), Ordering::Relaxed);
        }
    }
}

/// Writes one metric family in the Prometheus text format: its HELP and
/// TYPE lines, then a line per `(labels, value)` sample (`labels` without
/// braces, empty for none). A histogram family passes no samples and
/// renders its buckets after.
pub fn family<V: std::fmt::Display>(
    o: &mut String,
    name: &str,
    help: &str,
    kind: &str,
    samples: impl IntoIterator<Item = (String, V)>,
) {
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, value) in samples {
        if labels.is_empty() {
            let _ = writeln!(o, "{name} {value}");
        } else {
            let _ = writeln!(o, "{name}{{{labels}}} {value}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc_with_milliseconds() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(1_795_942_358_979_051_570);
        assert_eq!(rfc3339(t), "2026-11-29T08:52:38.979Z");
        assert_eq!(rfc3339(std::time::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    }
}
