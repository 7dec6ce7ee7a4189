//! How a consumer waits, and its options.

use std::time::Duration;

/// How a consumer waits for the next frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitMode {
    /// Spin for `spin`, then sleep on a futex (one wake-up syscall from the
    /// producer per frame at most, none while this consumer keeps up).
    Block {
        /// How long to spin before sleeping.
        spin: Duration,
    },
    /// Never sleep: lowest latency, one CPU core fully used.
    BusyPoll,
}

impl Default for WaitMode {
    /// `Block` with a 20 us spin: longer than a typical producer burst gap,
    /// far shorter than a frame period.
    fn default() -> Self {
        Self::Block { spin: Duration::from_micros(20) }
    }
}

/// How a consumer attaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerOptions {
    /// How to wait for frames.
    pub wait: WaitMode,
    /// Receive a sync_file with each frame the producer exports one for.
    pub want_sync_files: bool,
    /// How long to wait for the producer's answer when attaching.
    pub attach_timeout: Duration,
}

impl Default for ConsumerOptions {
    fn default() -> Self {
        Self { wait: WaitMode::default(), want_sync_files: false, attach_timeout: Duration::from_secs(5) }
    }
}
