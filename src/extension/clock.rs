//! A clock read lent by a hook's caller to the hook's first poll.
//!
//! The pipeline reads the clock just before it calls a hook (the start of
//! the call's latency), and a plugin's time budget read it again a few
//! dozen nanoseconds later, when the call's first turn began: one of the
//! three clock reads of a pass-through call (~20 ns each, a tenth of the
//! host's own cost per call). Now the pipeline lends its read for the
//! duration of the hook future's first poll, and the budget takes it
//! instead of reading the clock.
//!
//! The lent read is never later than the turn's true start, so a budget
//! that takes it charges the call the few nanoseconds of checkout in
//! between on top, never less than it used. The loan lasts one
//! synchronous poll on one thread and is taken at most once, so it cannot
//! reach another task or a later poll, where it would be stale.

use std::cell::Cell;
use std::time::Instant;

thread_local! {
    /// The read lent to the poll in progress on this thread, if any.
    static LENT: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Runs `poll` (one poll of a hook future) with `now` lent to it.
pub(crate) fn lend<R>(now: Instant, poll: impl FnOnce() -> R) -> R {
    /// Ends the loan however the poll ends (a panic included).
    struct Loan;
    impl Drop for Loan {
        fn drop(&mut self) {
            LENT.set(None);
        }
    }
    LENT.set(Some(now));
    let _loan = Loan;
    poll()
}

/// Takes the read lent to the poll in progress, if any (the next caller
/// gets `None` and reads the clock itself).
pub(crate) fn take() -> Option<Instant> {
    LENT.take()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loan_is_taken_once_and_ends_with_the_poll() {
        let now = Instant::now();
        let (first, second) = lend(now, || (take(), take()));
        assert_eq!(first, Some(now));
        assert_eq!(second, None, "taken at most once");
        lend(now, || ());
        assert_eq!(take(), None, "the loan ends with the poll");
        let _ = std::panic::catch_unwind(|| lend(now, || panic!("a poll that panics")));
        assert_eq!(take(), None, "also when the poll panics");
    }
}
