//! The time budget of one guest call, and how it is enforced.
//!
//! Every guest call is an async call (`call_async`) on a tokio worker,
//! with epoch interruption: a ticker thread advances the engine's epoch
//! every [`TICK`] (1 ms) and the guest checks it at loop heads and function
//! entries. Each time a running guest observes a new tick, the epoch
//! callback checks the call's budget and yields to the runtime, so the
//! worker serves other sessions before the guest goes on (one such turn is
//! at most a tick of guest code).
//! This is the model of the wasmtime embedding guide and Spin's host. The
//! alternative, synchronous calls on a pool of guest threads, would keep
//! the cheaper synchronous call (0.35 µs for a pass-through hook against
//! 0.81 µs async, release build, `benches/hooks.rs`) but pay a hand-off to
//! the guest thread and back on every call, measured at 44 µs on this
//! two-core machine (`execution-model/guest-thread-handoff`), a hundred
//! times the difference; and it still needs the same interruption.
//! Figures in BENCHMARKS.md.
//!
//! **What the budget counts** (`deadline_ms`, per call): the wall-clock
//! time the call spends on a worker thread (running guest code and the
//! host functions it calls), plus the time it waits inside WASI (a
//! `sleep`, a `poll`). It does *not* count the time the call waits for a
//! worker after a yield: a busy machine makes a hook slower, never makes
//! a healthy hook fail because other sessions had their turn. (A worker
//! descheduled by the operating system in the middle of a turn still
//! counts; a turn is at most one tick of guest code.) The check happens
//! at every tick of guest code, so a host function that takes long is
//! charged in full when the guest resumes. Out of budget, the call traps
//! with an interrupt and the instance is discarded.
//!
//! Deadlines are enforced here and nowhere else.

use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::Poll;
use std::time::Duration;

use tokio::time::Instant;
use wasmtime::{Store, Trap, UpdateDeadline};

/// The epoch tick: time budgets are enforced with this granularity.
pub(crate) const TICK: Duration = Duration::from_millis(1);

/// The process-wide origin of [`now_ns`].
fn origin() -> std::time::Instant {
    static ORIGIN: OnceLock<std::time::Instant> = OnceLock::new();
    *ORIGIN.get_or_init(std::time::Instant::now)
}

/// Nanoseconds since a process-wide origin (a monotonic clock).
fn now_ns() -> u64 {
    origin().elapsed().as_nanos() as u64
}

/// [`now_ns`], or the read the caller lent for this poll (see
/// [`clock`](crate::extension::clock)) if there is one.
fn turn_start_ns() -> u64 {
    let origin = origin();
    crate::extension::clock::take()
        .and_then(|lent| lent.checked_duration_since(origin))
        .map_or_else(now_ns, |since| since.as_nanos() as u64)
}

/// The running account of the call in progress on one instance.
#[derive(Debug, Default)]
pub(crate) struct CallMeter {
    /// The call's budget in nanoseconds.
    budget_ns: AtomicU64,
    /// Budget used by the call's finished turns and WASI waits.
    used_ns: AtomicU64,
    /// When the current turn (poll) began ([`now_ns`]).
    turn_started_ns: AtomicU64,
    /// Set by the epoch callback when it yields; tells the poller that the
    /// `Pending` it sees is a yield, not a WASI wait.
    yielded: AtomicBool,
}

impl CallMeter {
    /// Starts a call with `budget`.
    fn start(&self, budget: Duration) {
        self.budget_ns
            .store(budget.as_nanos() as u64, Ordering::Relaxed);
        self.used_ns.store(0, Ordering::Relaxed);
        self.yielded.store(false, Ordering::Relaxed);
    }

    /// Charges `ns` to the call.
    fn charge(&self, ns: u64) {
        self.used_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Budget left, counting the turn in progress up to `now` (if any).
    fn left(&self, now: Option<u64>) -> Duration {
        let turn = now.map_or(0, |now| {
            now.saturating_sub(self.turn_started_ns.load(Ordering::Relaxed))
        });
        let used = self.used_ns.load(Ordering::Relaxed) + turn;
        Duration::from_nanos(self.budget_ns.load(Ordering::Relaxed).saturating_sub(used))
    }

    /// The epoch callback: interrupt when the budget is spent; yield when
    /// this turn has run for a tick; otherwise go on (a call that merely
    /// crossed a tick boundary does not give up its worker: a yield costs
    /// a trip through the run queue while holding an instance, and with
    /// many sessions that made short calls queue for instances).
    fn on_tick(&self) -> UpdateDeadline {
        let now = now_ns();
        if self.left(Some(now)).is_zero() {
            UpdateDeadline::Interrupt
        } else if now.saturating_sub(self.turn_started_ns.load(Ordering::Relaxed))
            >= TICK.as_nanos() as u64
        {
            self.yielded.store(true, Ordering::Relaxed);
            UpdateDeadline::Yield(1)
        } else {
            UpdateDeadline::Continue(1)
        }
    }
}

/// Something whose store data carries a [`CallMeter`].
pub(crate) trait Metered {
    /// The meter of the instance.
    fn meter(&self) -> &CallMeter;
}

/// Sets up a new store: the epoch callback checks the meter every tick.
pub(crate) fn install<T: Metered + 'static>(store: &mut Store<T>) {
    store.epoch_deadline_callback(|ctx| Ok(ctx.data().meter().on_tick()));
}

/// Runs one guest call (`call`, a future borrowing `store`'s instance)
/// under `budget`. Returns the call's result, or an interrupt trap when
/// the budget ran out while the guest waited in WASI (running out while
/// running traps inside the guest, with the same error).
///
/// `call` is pinned by the caller, where it was made: a guest call's
/// future is several KiB (wasmtime's fiber call), and taking it by value
/// moved it twice more on every call (into this future, then into its
/// pinned slot).
pub(crate) async fn run<R>(
    meter: &CallMeter,
    budget: Duration,
    mut call: Pin<&mut impl Future<Output = wasmtime::Result<R>>>,
) -> wasmtime::Result<R> {
    meter.start(budget);
    // While the guest waits in WASI: since when, and a timer for the rest
    // of the budget.
    let mut waiting: Option<(Instant, Pin<Box<tokio::time::Sleep>>)> = None;
    std::future::poll_fn(|cx| {
        let turn_started = turn_start_ns();
        let timer = waiting.take().map(|(since, timer)| {
            meter.charge(since.elapsed().as_nanos() as u64);
            timer
        });
        meter.turn_started_ns.store(turn_started, Ordering::Relaxed);
        let polled = call.as_mut().poll(cx);
        if let Poll::Ready(result) = polled {
            // The account closes with the call: nothing left to charge
            // (and no clock read on the path of most calls).
            return Poll::Ready(result);
        }
        meter.charge(now_ns().saturating_sub(turn_started));
        if meter.yielded.swap(false, Ordering::Relaxed) {
            // A yield: the guest is runnable; waiting for a worker is free.
            return Poll::Pending;
        }
        let left = meter.left(None);
        if left.is_zero() {
            return Poll::Ready(Err(Trap::Interrupt.into()));
        }
        let deadline = Instant::now() + left;
        let mut timer = match timer {
            Some(mut timer) => {
                timer.as_mut().reset(deadline);
                timer
            }
            None => Box::pin(tokio::time::sleep_until(deadline)),
        };
        if timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(Trap::Interrupt.into()));
        }
        waiting = Some((Instant::now(), timer));
        Poll::Pending
    })
    .await
}
