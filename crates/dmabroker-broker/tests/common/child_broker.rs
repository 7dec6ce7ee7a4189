//! A real broker in a child process (the test binary itself, running its
//! ignored test `broker_process`, which calls [`serve_if_asked`]), so that a
//! test can stop it with SIGSTOP. Shared by the broker's hostile tests and
//! the C API's tests (included by path).

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The socket path the child broker serves, passed in the environment.
const SOCKET_ENV: &str = "DMABROKER_CHILD_BROKER_SOCKET";

pub struct ChildBroker {
    pub child: std::process::Child,
    pub path: PathBuf,
    dir: PathBuf,
}

impl ChildBroker {
    /// Start it and wait until its socket accepts connections.
    pub fn start(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("dmabroker-child-broker-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("broker.sock");
        let child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "broker_process", "--ignored", "--test-threads", "1", "--quiet"])
            .env(SOCKET_ENV, &path)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !accepts(&path) {
            assert!(Instant::now() < deadline, "the broker process did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, path, dir }
    }

    pub fn signal(&self, signal: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_child(&self.child);
        rustix::process::kill_process(pid, signal).unwrap();
        // kill() returns before the process stops: wait until it has (state
        // `T` in /proc/PID/stat), or it may still answer one more request.
        if signal == rustix::process::Signal::STOP {
            let stat = format!("/proc/{}/stat", self.child.id());
            let deadline = Instant::now() + Duration::from_secs(5);
            while !std::fs::read_to_string(&stat)
                .is_ok_and(|s| s.rsplit(')').next().is_some_and(|r| r.trim_start().starts_with('T')))
            {
                assert!(Instant::now() < deadline, "the broker did not stop");
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

impl Drop for ChildBroker {
    fn drop(&mut self) {
        self.signal(rustix::process::Signal::CONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A connection to `path` is accepted (the broker listens).
fn accepts(path: &std::path::Path) -> bool {
    let Ok(s) = rustix::net::socket_with(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::SEQPACKET,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    ) else {
        return false;
    };
    rustix::net::SocketAddrUnix::new(path).is_ok_and(|addr| rustix::net::connect(&s, &addr).is_ok())
}

/// The body of the binary's `broker_process` test: serve a broker on the
/// socket [`ChildBroker::start`] names, or return at once when run as a
/// test of its own.
pub fn serve_if_asked() {
    let Some(path) = std::env::var_os(SOCKET_ENV) else { return };
    let mut config = dmabroker_broker::Config::new(dmabroker_broker::Listener::Path(path.into()));
    config.notify = false;
    let (_stop, stop_rx) = std::os::unix::net::UnixStream::pair().unwrap();
    let mut broker = dmabroker_broker::Broker::start(config, Vec::new(), stop_rx.into()).unwrap();
    broker.run().unwrap();
}
