//! Workers started off the event loop: one long-lived thread runs each
//! `clone3` (which copies the broker's page tables and fd table, a cost that
//! grows with what the broker holds) and hands the worker back. The broker
//! asks for a worker when a client from another cgroup finishes its
//! handshake, so that by its first request the worker is usually running.
//!
//! The thread lives as long as the [`Spawner`]: the workers' parent-death
//! signal (`PR_SET_PDEATHSIG`) fires when the *thread* that created them
//! ends, so a thread per spawn would kill each worker at once.

use super::worker::Worker;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A worker started for a cgroup, or why not.
pub type Started = (String, std::io::Result<Worker>);

/// The spawning thread and its channels.
#[derive(Debug)]
pub struct Spawner {
    requests: Sender<String>,
    started: Receiver<Started>,
}

impl Spawner {
    /// Start the thread that spawns workers from `exe` under the cgroup2
    /// mount `root`.
    ///
    /// # Errors
    /// The thread could not be created.
    pub fn new(exe: Arc<OwnedFd>, root: PathBuf) -> std::io::Result<Self> {
        let (requests, asked) = mpsc::channel::<String>();
        let (done, started) = mpsc::channel::<Started>();
        std::thread::Builder::new().name("charge-spawner".into()).spawn(move || {
            // Ends when the broker drops its Spawner (the sender).
            for cgroup in asked {
                let w = Worker::spawn(&exe, &root, &cgroup);
                if done.send((cgroup, w)).is_err() {
                    break;
                }
            }
        })?;
        Ok(Self { requests, started })
    }

    /// Ask for a worker in `cgroup` (answered by [`Spawner::poll`] or
    /// [`Spawner::wait`]). False when the thread is gone.
    pub fn request(&self, cgroup: &str) -> bool {
        self.requests.send(cgroup.to_owned()).is_ok()
    }

    /// The workers started since the last call, without waiting.
    pub fn poll(&self) -> Vec<Started> {
        self.started.try_iter().collect()
    }

    /// Wait until the answer for `cgroup` arrives or `until`; every answer
    /// that arrives meanwhile is returned, `cgroup`'s last.
    pub fn wait(&self, cgroup: &str, until: Instant) -> Vec<Started> {
        let mut got = Vec::new();
        loop {
            let left = until.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
            match self.started.recv_timeout(left) {
                Ok(s) => {
                    let ours = s.0 == cgroup;
                    got.push(s);
                    if ours {
                        return got;
                    }
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return got,
            }
            if Instant::now() >= until {
                return got;
            }
        }
    }
}
