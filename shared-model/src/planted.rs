//! Bugs planted on purpose, for the simulations to prove that their checkers find them (issue: test teeth).
//!
//! Compiled only with the `planted-bugs` feature (the `simulations` crate turns it on); without it every switch is
//! a constant `false` and the code paths below vanish. Switches are per thread, so one simulated run with a bug
//! never affects another running beside it.

/// A protocol bug that can be planted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bug {
    /// The consumer applies every contiguous batch it holds, recorded or not.
    ApplyPastFrontier,
    /// The producer adopts a log that is ahead of the batches it proposed (marks the log's position published).
    AdoptLogAhead,
    /// The consumer applies the first copy of a seq it read, not the copy the log recorded.
    ApplyOtherCopy,
    /// The fold executes a retried request again instead of answering from the idempotency cache.
    SkipIdempotency,
}

#[cfg(feature = "planted-bugs")]
thread_local! {
    static PLANTED: std::cell::Cell<Option<Bug>> = const { std::cell::Cell::new(None) };
}

/// Plants `bug` (or none) on this thread.
#[cfg(feature = "planted-bugs")]
pub fn plant(bug: Option<Bug>) {
    PLANTED.with(|p| p.set(bug));
}

/// Whether `bug` is planted on this thread.
#[inline]
pub fn planted(bug: Bug) -> bool {
    #[cfg(feature = "planted-bugs")]
    {
        PLANTED.with(|p| p.get() == Some(bug))
    }
    #[cfg(not(feature = "planted-bugs"))]
    {
        let _ = bug;
        false
    }
}
