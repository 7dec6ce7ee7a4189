//! `dmabroker serve` as a separate process in a private directory, and the
//! CLI verbs run against it.

use dmabroker::client::Client;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The uid the tests play another user with.
pub const NOBODY: u32 = 65534;

/// The `dmabroker` binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_dmabroker")
}

/// A running `dmabroker serve`, stopped (SIGTERM) and its directory removed
/// when dropped.
pub struct Daemon {
    pub child: Child,
    pub socket: PathBuf,
    pub dir: PathBuf,
}

impl Daemon {
    /// Start a broker in `<tmp>/<prefix>-<pid>-<name>` (readable by other
    /// uids) with `extra` arguments, and wait up to `start_within` until it
    /// accepts clients.
    pub fn start(prefix: &str, name: &str, extra: &[&str], start_within: Duration) -> Self {
        let dir = std::env::temp_dir().join(format!("{prefix}-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        rustix::fs::chmod(&dir, rustix::fs::Mode::from_raw_mode(0o755)).unwrap();
        let socket = dir.join("b.sock");
        let child = Command::new(bin())
            .args(["serve", "--socket"])
            .arg(&socket)
            .args(["--sweep-interval-ms", "100"])
            .args(extra)
            .env_remove("NOTIFY_SOCKET")
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + start_within;
        while Client::connect(&socket).is_err() {
            assert!(Instant::now() < deadline, "broker did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, socket, dir }
    }

    /// Run the CLI against this broker.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(bin()).args(args).env("DMABROKER_SOCKET", &self.socket).output().unwrap()
    }

    /// Run the CLI against this broker as `uid` (and gid `uid`; root only).
    pub fn cli_as(&self, uid: u32, args: &[&str]) -> Output {
        Command::new(bin()).args(args).env("DMABROKER_SOCKET", &self.socket).uid(uid).gid(uid).output().unwrap()
    }

    /// How many fds the broker process has open.
    pub fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id())).unwrap().count()
    }

    /// Whether the broker process still runs.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let pid = rustix::process::Pid::from_child(&self.child);
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A command's stdout and stderr, for messages and matching.
pub fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}
