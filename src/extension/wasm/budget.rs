//! The time budget of one guest call, and how it is enforced.
//!
//! Every guest call is an async call (`call_async`) on a tokio worker,
//! with epoch interruption: a ticker thread advances the engine's epoch
//! every [`TICK`] (1 ms) and the guest checks it at loop heads and function
//! entries. Each time a running guest observes a new tick, the epoch
//! callback counts one tick against the call's budget and yields to the
//! runtime, so the worker serves other sessions before the guest goes on.
//! This is the model of the wasmtime embedding guide and Spin's host; the
//! alternative, a pool of guest threads, pays a thread hand-off on every
//! call and still needs the same interruption (measured in BENCHMARKS.md).
//!
//! **What the budget counts** (`deadline_ms`, per call): the time the
//! guest runs, in ticks, plus the wall-clock time it waits inside WASI (a
//! `sleep`, a `poll`). It does *not* count the time the call waits for a
//! worker after a yield, nor the time its thread is descheduled by the
//! operating system (such a gap shows as one tick at most): a busy
//! machine makes a hook slower, never makes a healthy hook fail. Out of
//! budget, the call traps with an interrupt and the instance is
//! discarded.
//!
//! Deadlines become ticks here and nowhere else.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::Poll;
use std::time::Duration;

use tokio::time::Instant;
use wasmtime::{Store, Trap, UpdateDeadline};

/// The epoch tick: time budgets are enforced with this granularity.
pub(crate) const TICK: Duration = Duration::from_millis(1);

/// The running account of the call in progress on one instance.
#[derive(Debug, Default)]
pub(crate) struct CallMeter {
    /// The call's budget in microseconds.
    budget_us: AtomicU64,
    /// Ticks the guest was seen running.
    ticks: AtomicU64,
    /// Microseconds spent waiting inside WASI.
    waited_us: AtomicU64,
    /// Set by the epoch callback when it yields; tells the poller that the
    /// `Pending` it sees is a yield, not a WASI wait.
    yielded: AtomicBool,
}

impl CallMeter {
    /// Starts a call with `budget`.
    fn start(&self, budget: Duration) {
        self.budget_us
            .store(budget.as_micros() as u64, Ordering::Relaxed);
        self.ticks.store(0, Ordering::Relaxed);
        self.waited_us.store(0, Ordering::Relaxed);
        self.yielded.store(false, Ordering::Relaxed);
    }

    /// Budget used so far, in microseconds.
    fn used_us(&self) -> u64 {
        self.ticks.load(Ordering::Relaxed) * TICK.as_micros() as u64
            + self.waited_us.load(Ordering::Relaxed)
    }

    /// Budget left.
    fn left(&self) -> Duration {
        Duration::from_micros(
            self.budget_us
                .load(Ordering::Relaxed)
                .saturating_sub(self.used_us()),
        )
    }

    /// The epoch callback: one more tick of running; interrupt when the
    /// budget is spent, yield otherwise.
    fn on_tick(&self) -> UpdateDeadline {
        self.ticks.fetch_add(1, Ordering::Relaxed);
        if self.left().is_zero() {
            UpdateDeadline::Interrupt
        } else {
            self.yielded.store(true, Ordering::Relaxed);
            UpdateDeadline::Yield(1)
        }
    }
}

/// Something whose store data carries a [`CallMeter`].
pub(crate) trait Metered {
    /// The meter of the instance.
    fn meter(&self) -> &CallMeter;
}

/// Sets up a new store: epoch callback counting ticks against the meter.
pub(crate) fn install<T: Metered + 'static>(store: &mut Store<T>) {
    store.epoch_deadline_callback(|ctx| Ok(ctx.data().meter().on_tick()));
}

/// Runs one guest call (`call`, a future borrowing `store`'s instance)
/// under `budget`. Returns the call's result, or an interrupt trap when
/// the budget ran out while the guest waited in WASI (running out while
/// running traps inside the guest, with the same error).
pub(crate) async fn run<R>(
    meter: &CallMeter,
    budget: Duration,
    call: impl Future<Output = wasmtime::Result<R>>,
) -> wasmtime::Result<R> {
    meter.start(budget);
    let mut call = std::pin::pin!(call);
    // While the guest waits in WASI: since when, and a timer for the rest
    // of the budget.
    let mut waiting: Option<(Instant, Pin<Box<tokio::time::Sleep>>)> = None;
    std::future::poll_fn(|cx| {
        let timer = waiting.take().map(|(since, timer)| {
            meter
                .waited_us
                .fetch_add(since.elapsed().as_micros() as u64, Ordering::Relaxed);
            timer
        });
        if let Poll::Ready(result) = call.as_mut().poll(cx) {
            return Poll::Ready(result);
        }
        if meter.yielded.swap(false, Ordering::Relaxed) {
            // A yield: the guest is runnable; waiting for a worker is free.
            return Poll::Pending;
        }
        let left = meter.left();
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
