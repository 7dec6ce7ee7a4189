//! Shared by this crate's integration tests (`mod common;`): the broker in a
//! thread of the test process, and threads acting as another user. Not every
//! test file uses every helper.
#![allow(dead_code)]

#[path = "../../../dmabroker/tests/common/skip.rs"]
mod skip_rule;
#[allow(unused_imports)]
pub use skip_rule::{in_vm, skip, skip_for_tool};

use dmabroker::client::Client;
use dmabroker_broker::{Broker, Config, Listener, Policy};
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::Duration;

/// The uid the tests play another user with.
pub const NOBODY: u32 = 65534;

/// A broker running in a thread of this process on a socket in a private
/// directory; stopped, and the directory removed, when dropped.
pub struct TestBroker {
    /// The broker's socket.
    pub path: PathBuf,
    stop: UnixStream,
    thread: Option<JoinHandle<()>>,
    dir: PathBuf,
}

impl TestBroker {
    /// Start a broker with the default client limit, and `policy` (TOML) if given.
    pub fn start(name: &str, policy: Option<&str>) -> Self {
        Self::start_with(name, policy, 8192)
    }

    /// Start a broker serving at most `max_clients` clients.
    pub fn start_with(name: &str, policy: Option<&str>, max_clients: usize) -> Self {
        Self::start_full(name, policy, max_clients, |_| {})
    }

    /// Start a broker with the defaults, then `adjust` applied to its config.
    pub fn start_with_config(name: &str, adjust: impl FnOnce(&mut Config)) -> Self {
        Self::start_full(name, None, 8192, adjust)
    }

    fn start_full(name: &str, policy: Option<&str>, max_clients: usize, adjust: impl FnOnce(&mut Config)) -> Self {
        // The test binary's name keeps concurrent test binaries apart.
        let dir =
            std::env::temp_dir().join(format!("dmabroker-{}-{}-{name}", env!("CARGO_CRATE_NAME"), std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // Other uids must reach the socket.
        rustix::fs::chmod(&dir, rustix::fs::Mode::from_raw_mode(0o755)).unwrap();
        let path = dir.join("broker.sock");
        let mut config = Config::new(Listener::Path(path.clone()));
        config.notify = false;
        config.clients_in_process = true;
        config.max_clients = max_clients;
        config.timing.interval = Duration::from_millis(50);
        if let Some(p) = policy {
            config.policy = Policy::parse(p, rustix::process::getuid().as_raw()).unwrap();
        }
        adjust(&mut config);
        let (stop, stop_rx) = UnixStream::pair().unwrap();
        let mut broker = Broker::start(config, Vec::new(), stop_rx.into()).unwrap();
        let thread = std::thread::spawn(move || broker.run().unwrap());
        Self { path, stop, thread: Some(thread), dir }
    }

    /// A new client session.
    pub fn client(&self) -> Client {
        Client::connect(&self.path).unwrap()
    }

    /// A bare connection to the broker, nothing sent yet (not even `Hello`):
    /// for requests the client would not send.
    pub fn raw_socket(&self) -> OwnedFd {
        let s = rustix::net::socket_with(
            rustix::net::AddressFamily::UNIX,
            rustix::net::SocketType::SEQPACKET,
            rustix::net::SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        rustix::net::connect(&s, &rustix::net::SocketAddrUnix::new(&self.path).unwrap()).unwrap();
        s
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        let _ = self.stop.write_all(b"x");
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// This process's uid.
pub fn uid() -> u32 {
    rustix::process::getuid().as_raw()
}

/// A policy that lets `uid` allocate from memfd only, up to `max_bytes`
/// (e.g. `"1MiB"`) in at most `max_buffers` buffers.
pub fn memfd_policy(uid: u32, max_bytes: &str, max_buffers: u32) -> String {
    format!("[[user]]\nuid = {uid}\nheaps = [\"memfd\"]\nmax_bytes = \"{max_bytes}\"\nmax_buffers = {max_buffers}\n")
}

/// Run `f` in a thread whose uid and gid are `uid` (root only); a panic in
/// `f` is this caller's panic.
pub fn as_user<T: Send + 'static>(uid: u32, f: impl FnOnce() -> T + Send + 'static) -> T {
    as_user_in_groups(uid, &[], f)
}

/// [`as_user`] with these supplementary groups.
pub fn as_user_in_groups<T: Send + 'static>(
    uid: u32,
    supplementary: &[u32],
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let supplementary: Vec<_> = supplementary.iter().map(|g| rustix::process::Gid::from_raw(*g)).collect();
    std::thread::spawn(move || {
        let gid = rustix::process::Gid::from_raw(uid);
        rustix::thread::set_thread_groups(&supplementary).unwrap();
        rustix::thread::set_thread_res_gid(gid, gid, gid).unwrap();
        let u = rustix::process::Uid::from_raw(uid);
        rustix::thread::set_thread_res_uid(u, u, u).unwrap();
        assert_eq!(rustix::process::geteuid().as_raw(), uid, "the thread did not change its uid");
        f()
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// Retry `attempt` until it succeeds, for at most 10 s. For allocations right
/// after a close: the broker ends a charge when a sweep sees the buffer
/// unheld, and quota refusals sweep at once only within a time budget (a busy
/// machine can spend it), after which the background sweep (every 2 s)
/// catches up.
pub fn eventually<T, E: std::fmt::Debug>(what: &str, mut attempt: impl FnMut() -> Result<T, E>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match attempt() {
            Ok(v) => return v,
            Err(e) if std::time::Instant::now() >= deadline => panic!("{what}: still failing after 10 s: {e:?}"),
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(50)),
        }
    }
}
