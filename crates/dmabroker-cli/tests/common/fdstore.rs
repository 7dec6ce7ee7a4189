//! A service manager as the broker sees systemd: it owns `$NOTIFY_SOCKET`,
//! keeps the fds sent with `FDSTORE=1`, honours `FDSTOREREMOVE=1`, and starts
//! a broker with stored fds as `LISTEN_FDS` (at fd 3 and up, `LISTEN_PID` =
//! the broker's pid, set by a `bash` that then `exec`s the broker). Used by
//! the restart tests and the soak.

use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
use std::collections::BTreeMap;
use std::io::IoSliceMut;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Manager {
    pub socket: OwnedFd,
    pub store: BTreeMap<String, OwnedFd>,
    pub ready: usize,
    /// The buffers stored (`FDSTORE=1` but the state), in arrival order:
    /// (name, inode).
    pub stored: Vec<(String, u64)>,
}

/// The manager, drained continuously by a thread as systemd would (the
/// broker's datagrams would otherwise fill the socket's short queue).
#[derive(Clone)]
pub struct Shared(pub std::sync::Arc<std::sync::Mutex<Manager>>);

impl Shared {
    pub fn spawn(manager: Manager) -> Self {
        let shared = Self(std::sync::Arc::new(std::sync::Mutex::new(manager)));
        let s = shared.clone();
        std::thread::spawn(move || loop {
            s.0.lock().unwrap().drain();
            std::thread::sleep(Duration::from_millis(5));
        });
        shared
    }

    pub fn wait_ready(&self, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.0.lock().unwrap().ready < count {
            assert!(Instant::now() < deadline, "broker never sent READY=1");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Manager {
    /// Handle every queued notification.
    pub fn drain(&mut self) {
        loop {
            let mut buf = [0u8; 4096];
            let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
            let mut control = RecvAncillaryBuffer::new(&mut space);
            let Ok(msg) = rustix::net::recvmsg(
                &self.socket,
                &mut [IoSliceMut::new(&mut buf)],
                &mut control,
                RecvFlags::DONTWAIT | RecvFlags::CMSG_CLOEXEC,
            ) else {
                return;
            };
            let mut fds: Vec<OwnedFd> = Vec::new();
            for m in control.drain() {
                if let RecvAncillaryMessage::ScmRights(r) = m {
                    fds.extend(r);
                }
            }
            let text = String::from_utf8_lossy(&buf[..msg.bytes]).into_owned();
            let name = text.lines().find_map(|l| l.strip_prefix("FDNAME=")).unwrap_or("stored").to_owned();
            if text.lines().any(|l| l == "READY=1") {
                self.ready += 1;
            }
            if text.lines().any(|l| l == "FDSTOREREMOVE=1") {
                self.store.remove(&name);
            } else if text.lines().any(|l| l == "FDSTORE=1") {
                let fd = fds.pop().expect("FDSTORE=1 without an fd");
                if name != "state" {
                    self.stored.push((name.clone(), rustix::fs::fstat(&fd).unwrap().st_ino));
                }
                self.store.insert(name, fd);
            }
        }
    }
}

pub fn stop(child: &mut Child) {
    let _ = rustix::process::kill_process(rustix::process::Pid::from_child(child), rustix::process::Signal::TERM);
    let status = child.wait().unwrap();
    assert!(status.success(), "graceful shutdown should exit 0: {status}");
}

/// Tests that pass fds down clear close-on-exec on copies of them: one at
/// a time, so that no other test's child inherits them.
pub static PASSING_FDS: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub fn spawn_broker(dir: &Path, notify: &Path, inherited: &[(String, OwnedFd)]) -> Child {
    spawn_broker_with(dir, notify, inherited, Stdio::null())
}

pub fn spawn_broker_with(dir: &Path, notify: &Path, inherited: &[(String, OwnedFd)], stderr: Stdio) -> Child {
    // Move the fds out of the way (100 and up), let them be inherited, and
    // have bash put them at 3, 4, ... before exec'ing the broker with its
    // own pid in LISTEN_PID.
    let mut high = Vec::new();
    let mut script = String::new();
    for (i, (_, fd)) in inherited.iter().enumerate() {
        let h = rustix::io::fcntl_dupfd_cloexec(fd, 100).unwrap();
        rustix::io::fcntl_setfd(&h, rustix::io::FdFlags::empty()).unwrap();
        script.push_str(&format!("exec {}<&{} {}<&-; ", 3 + i, h.as_raw_fd(), h.as_raw_fd()));
        high.push(h);
    }
    let names: Vec<&str> = inherited.iter().map(|(n, _)| n.as_str()).collect();
    script.push_str(&format!(
        "export LISTEN_PID=$$ LISTEN_FDS={} LISTEN_FDNAMES={}; exec \"$0\" \"$@\"",
        inherited.len(),
        names.join(":")
    ));
    let child = Command::new("bash")
        .arg("-c")
        .arg(if inherited.is_empty() { "exec \"$0\" \"$@\"".to_owned() } else { script })
        .arg(env!("CARGO_BIN_EXE_dmabroker"))
        .args(["serve", "--socket"])
        .arg(dir.join("b.sock"))
        .env("NOTIFY_SOCKET", notify)
        .stderr(stderr)
        .spawn()
        .unwrap();
    drop(high); // the parent's copies; the child has its own
    child
}
