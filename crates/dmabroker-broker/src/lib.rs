//! The dmabroker daemon's logic: allocation service, sharing between
//! processes with access control, quotas and accounting.
//!
//! ```no_run
//! use dmabroker_broker::{Broker, Config, Listener};
//! let (stop_tx, stop_rx) = std::os::unix::net::UnixStream::pair().unwrap();
//! let config = Config::new(Listener::Path("/tmp/dmabroker.sock".into()));
//! let mut broker = Broker::start(config, Vec::new(), stop_rx.into()).unwrap();
//! // From another thread: write a byte to stop_tx to stop it.
//! # drop(stop_tx);
//! broker.run().unwrap();
//! ```
//!
//! | file | concern |
//! |---|---|
//! | [`server`] | the epoll loop, connections, framing, hostile input |
//! | [`service`] | the operations under the policy, sweeps, timers |
//! | [`registry`] | buffers, publications, charges |
//! | [`charge`] | dma-heap allocations charged to the client's cgroup (workers) |
//! | [`offload`] | large allocations on a thread, off the loop |
//! | [`holders`] | who else holds a buffer (dma-buf counts, `/proc` scans) |
//! | [`policy`] | the TOML policy |
//! | [`peer`] | `SO_PEERCRED` + pidfd |
//! | [`notify`], [`persist`] | `sd_notify`, the fd store, restarts |
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod charge;
pub mod holders;
pub mod names;
pub mod notify;
pub mod offload;
pub mod peer;
pub mod persist;
pub mod policy;
pub mod pools;
pub mod refusal;
pub mod registry;
pub mod server;
pub mod service;
#[cfg(test)]
#[path = "../../dmabroker/tests/common/skip.rs"]
pub(crate) mod test_skip;

use dmabroker::heap::Heaps;
use dmabroker_sys::inherited::InheritedFd;
use rustix::io::Errno;
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

pub use policy::{Limits, Policy};
pub use server::{RunError, Server};
pub use service::{Service, SweepTiming};

/// Where the broker listens.
#[derive(Debug)]
pub enum Listener {
    /// Bind this path (a stale socket is replaced; a live one, or anything
    /// that is not a socket, is an error: see [`bind`]).
    Path(PathBuf),
    /// A listening socket passed by the service manager.
    Inherited(OwnedFd),
}

/// How to run the broker.
#[derive(Debug)]
pub struct Config {
    /// The socket.
    pub listener: Listener,
    /// The policy (default: [`Policy::builtin`] for the broker's uid).
    pub policy: Policy,
    /// Most clients connected at once.
    pub max_clients: usize,
    /// Most clients of one uid connected at once.
    pub max_clients_per_uid: usize,
    /// Sweep timing.
    pub timing: SweepTiming,
    /// A connection that sends no `Hello` within this is closed.
    pub handshake_timeout: std::time::Duration,
    /// Talk to the service manager (`$NOTIFY_SOCKET`) when it is set.
    pub notify: bool,
    /// Clients run inside the broker's own process (tests, embedding): count
    /// this process's fds and mappings as holders too.
    pub clients_in_process: bool,
    /// The `dmabroker` executable whose `charge-worker` mode allocates in a
    /// client's cgroup ([`charge`]); `None`: the broker allocates itself.
    pub charge_worker: Option<PathBuf>,
    /// How long an unused allocation worker is kept.
    pub charge_worker_idle: std::time::Duration,
    /// Start a client's worker at its `Hello` (the default), not at its
    /// first allocation (kept for measuring what that saves).
    pub charge_worker_at_hello: bool,
}

impl Config {
    /// Defaults: the built-in policy, 8192 clients (4096 per uid asked, at
    /// most a quarter of the slots not reserved for root and the broker's
    /// uid is granted), a 5 s handshake timeout, notify when run by a
    /// manager.
    pub fn new(listener: Listener) -> Self {
        Self {
            listener,
            policy: Policy::builtin(rustix::process::getuid().as_raw()),
            max_clients: 8192,
            max_clients_per_uid: 4096,
            timing: SweepTiming::default(),
            handshake_timeout: server::HANDSHAKE_TIMEOUT,
            notify: true,
            clients_in_process: false,
            charge_worker: None,
            charge_worker_idle: std::time::Duration::from_secs(30),
            charge_worker_at_hello: true,
        }
    }
}

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// Another broker answers on the path.
    #[error("a broker is already running on {0}: stop it, or pass another --socket")]
    AlreadyRunning(PathBuf),
    /// Something other than a socket is at the path: never removed.
    #[error(
        "{path} exists and is {what}, not a socket: the broker replaces only a stale socket there; pass another \
         --socket, or move that file away yourself if it is not needed"
    )]
    NotASocket {
        /// The path.
        path: PathBuf,
        /// What is there ("a regular file", "a directory", ...).
        what: &'static str,
    },
    /// A socket that is not a stale one of a broker (another program's, or
    /// one this user may not connect to): never removed.
    #[error(
        "{path} is a socket in use or not ours (connecting to it: {source}): pass another --socket, or stop the \
         program listening there"
    )]
    SocketInUse {
        /// The path.
        path: PathBuf,
        /// What `connect` said (not `ECONNREFUSED`, which marks a stale socket).
        source: Errno,
    },
    /// A non-root broker without `$XDG_RUNTIME_DIR` and without `--socket`.
    #[error(
        "XDG_RUNTIME_DIR is not set, so there is no private directory for this user's broker socket: pass \
         --socket PATH (in a directory only you can write), or set XDG_RUNTIME_DIR (a login session sets it to \
         /run/user/{uid}; clients look for $XDG_RUNTIME_DIR/dmabroker.sock)"
    )]
    NoRuntimeDir {
        /// The broker's uid.
        uid: u32,
    },
    /// The socket passed by the service manager cannot serve clients.
    #[error("the socket passed by the service manager (LISTEN_FDS) {0}")]
    BadInheritedSocket(String),
    /// The socket could not be created or bound.
    #[error("cannot listen on {path}: {source}{hint}")]
    Bind {
        /// The path.
        path: PathBuf,
        /// The errno.
        source: Errno,
        /// What to do.
        hint: &'static str,
    },
    /// The event loop could not be set up.
    #[error(transparent)]
    Run(#[from] RunError),
}

/// The socket file the broker bound: its path and identity (device and
/// inode, from `lstat` right after `bind`), so that at exit it removes that
/// path only while it is still this socket.
#[derive(Debug, Clone)]
pub struct BoundSocket {
    /// The path.
    pub path: PathBuf,
    /// `st_dev` of the socket file.
    pub dev: u64,
    /// `st_ino` of the socket file.
    pub ino: u64,
    /// The exclusive lock on `<path>.lock`, taken before `bind` and held
    /// while the broker lives: a second broker started at the same moment
    /// is refused even while the first has bound but not yet listened
    /// (when its socket refuses connections like a stale one).
    pub lock: Option<std::sync::Arc<dmabroker::pool::PathLock>>,
}

impl BoundSocket {
    /// Whether the path is still this socket file.
    pub fn is_still_there(&self) -> bool {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        std::fs::symlink_metadata(&self.path)
            .is_ok_and(|m| m.file_type().is_socket() && m.dev() == self.dev && m.ino() == self.ino)
    }

    /// Remove the socket file if the path is still this socket (another
    /// broker may have replaced it, or anything else been put there).
    pub fn remove(&self) {
        if self.is_still_there() {
            if let Err(e) = std::fs::remove_file(&self.path) {
                tracing::warn!("cannot remove the socket {}: {e}", self.path.display());
            }
        } else {
            tracing::info!("{} is no longer this broker's socket: left in place", self.path.display());
        }
    }
}

/// The daemon: a [`Server`] plus what it must undo at exit.
#[derive(Debug)]
pub struct Broker {
    server: Server,
    socket: Option<BoundSocket>,
}

/// `socket(AF_UNIX, SOCK_SEQPACKET)` + `bind` + `listen`, mode 0666 (access
/// is decided by the policy, per uid, not by file permissions).
///
/// Whatever is already at `path` is left alone unless it is a stale socket:
/// `lstat` says socket and `connect` is refused (`ECONNREFUSED`: nobody
/// listens, e.g. a broker that crashed). A live broker is
/// [`StartError::AlreadyRunning`]; another program's socket
/// [`StartError::SocketInUse`]; a file, directory, symbolic link or device
/// [`StartError::NotASocket`].
///
/// # Errors
/// [`StartError`].
pub fn bind(path: &Path) -> Result<(OwnedFd, BoundSocket), StartError> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let bind_err = |source, hint| StartError::Bind { path: path.to_owned(), source, hint };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| bind_err(Errno::from_io_error(&e).unwrap_or(Errno::IO), ": cannot create its directory"))?;
    }
    let lock = match dmabroker::pool::PathLock::take(path) {
        Ok(Some(lock)) => lock,
        Ok(None) => return Err(StartError::AlreadyRunning(path.to_owned())),
        Err(dmabroker::pool::ListenError::Os { source, .. }) => {
            return Err(bind_err(source, ": cannot lock the lock file beside the socket (<socket>.lock)"))
        }
        Err(_) => {
            return Err(bind_err(
                Errno::ACCESS,
                ": cannot create the lock file beside the socket (<socket>.lock): run as root for /run/dmabroker, \
                 or pass --socket",
            ))
        }
    };
    let socket = rustix::net::socket_with(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC, None)
        .map_err(|e| bind_err(e, ""))?;
    let addr = SocketAddrUnix::new(path).map_err(|e| bind_err(e, ": path too long for a Unix socket (108 bytes)"))?;
    match rustix::net::bind(&socket, &addr) {
        Ok(()) => {}
        Err(Errno::ADDRINUSE) => {
            let meta = std::fs::symlink_metadata(path)
                .map_err(|e| bind_err(Errno::from_io_error(&e).unwrap_or(Errno::ADDRINUSE), ""))?;
            if !meta.file_type().is_socket() {
                return Err(StartError::NotASocket {
                    path: path.to_owned(),
                    what: dmabroker::file_kind::of_metadata(&meta),
                });
            }
            // A live broker answers; a stale socket from a crash refuses.
            let probe =
                rustix::net::socket_with(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC, None)
                    .map_err(|e| bind_err(e, ""))?;
            match rustix::net::connect(&probe, &addr) {
                // EAGAIN: a live listener whose backlog is full.
                Ok(()) | Err(Errno::AGAIN) => return Err(StartError::AlreadyRunning(path.to_owned())),
                Err(Errno::CONNREFUSED) => {}
                Err(source) => return Err(StartError::SocketInUse { path: path.to_owned(), source }),
            }
            // Still the same stale socket (not swapped meanwhile)?
            let again = std::fs::symlink_metadata(path).ok();
            if !again.is_some_and(|m| m.file_type().is_socket() && m.dev() == meta.dev() && m.ino() == meta.ino()) {
                return Err(bind_err(Errno::ADDRINUSE, ": the path changed while the broker checked it; retry"));
            }
            tracing::info!("replacing the stale socket {}", path.display());
            std::fs::remove_file(path).map_err(|e| {
                bind_err(Errno::from_io_error(&e).unwrap_or(Errno::ADDRINUSE), ": cannot remove the stale socket")
            })?;
            rustix::net::bind(&socket, &addr).map_err(|e| bind_err(e, ""))?;
        }
        Err(e @ (Errno::ACCESS | Errno::PERM)) => {
            return Err(bind_err(e, ": run as root for /run/dmabroker, or pass --socket"))
        }
        Err(e) => return Err(bind_err(e, "")),
    }
    // Identify the file just bound without following a link (O_PATH |
    // O_NOFOLLOW), and chmod that very inode through /proc/self/fd: a path
    // swapped for a symbolic link meanwhile must not redirect the chmod.
    let file = rustix::fs::open(
        path,
        rustix::fs::OFlags::PATH | rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| bind_err(e, ": the socket file vanished right after bind"))?;
    let st = rustix::fs::fstat(&file).map_err(|e| bind_err(e, ""))?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::Socket {
        return Err(bind_err(Errno::EXIST, ": the path was replaced right after bind"));
    }
    use std::os::fd::AsRawFd;
    if let Err(e) =
        rustix::fs::chmod(format!("/proc/self/fd/{}", file.as_raw_fd()), rustix::fs::Mode::from_raw_mode(0o666))
    {
        tracing::warn!("cannot make {} reachable by every user (chmod 0666): {e}", path.display());
    }
    let bound = BoundSocket {
        path: path.to_owned(),
        dev: st.st_dev as u64,
        ino: st.st_ino as u64,
        lock: Some(std::sync::Arc::new(lock)),
    };
    rustix::net::listen(&socket, 1024).map_err(|e| bind_err(e, ""))?;
    Ok((socket, bound))
}

/// Check a listening socket passed by the service manager: a Unix
/// `SOCK_SEQPACKET` socket in listening state (`SO_TYPE`, `SO_ACCEPTCONN`).
///
/// # Errors
/// [`StartError::BadInheritedSocket`] saying what the `.socket` unit must say.
pub fn check_inherited_listener(fd: &OwnedFd) -> Result<(), StartError> {
    let bad = |m: String| Err(StartError::BadInheritedSocket(m));
    match rustix::net::sockopt::socket_type(fd) {
        Ok(SocketType::SEQPACKET) => {}
        Ok(t) => {
            let what = match t {
                SocketType::STREAM => "a stream socket (SOCK_STREAM, ListenStream=)",
                SocketType::DGRAM => "a datagram socket (SOCK_DGRAM, ListenDatagram=)",
                _ => "not a SOCK_SEQPACKET socket",
            };
            return bad(format!(
                "is {what}: the protocol keeps message boundaries and needs SOCK_SEQPACKET; use \
                 ListenSequentialPacket=/run/dmabroker/dmabroker.sock in the .socket unit (see \
                 systemd/dmabroker.socket)"
            ));
        }
        Err(e) => return bad(format!("is not a socket ({e}): pass the .socket unit's listening socket")),
    }
    match rustix::net::sockopt::socket_acceptconn(fd) {
        Ok(true) => Ok(()),
        Ok(false) => {
            bad("is not listening (a connected socket, as Accept=yes passes): use Accept=no (the default) with \
             ListenSequentialPacket= in the .socket unit"
                .into())
        }
        Err(e) => bad(format!("cannot be checked for listening (SO_ACCEPTCONN: {e})")),
    }
}

impl Broker {
    /// Set up: bind (or adopt) the socket, restore stored buffers from
    /// `inherited` (the fd store), and tell the service manager it is ready.
    /// `shutdown` becoming readable stops [`Broker::run`].
    ///
    /// # Errors
    /// [`StartError`].
    pub fn start(config: Config, inherited: Vec<InheritedFd>, shutdown: OwnedFd) -> Result<Self, StartError> {
        let (listener, socket) = match config.listener {
            Listener::Path(p) => {
                let (fd, bound) = bind(&p)?;
                (fd, Some(bound))
            }
            Listener::Inherited(fd) => {
                check_inherited_listener(&fd)?;
                (fd, None)
            }
        };
        let notifier = if config.notify { notify::Notifier::from_env() } else { None };
        let heaps = Heaps::discover();
        let names = heaps.names();
        for (rule, heap) in config.policy.unknown_heaps(&names) {
            tracing::warn!(
                "policy {rule}: heap `{heap}` does not exist on this machine (its heaps: {}); it allows nothing here",
                names.join(", ")
            );
        }
        let rules = config.policy.cgroup_rules().len();
        if rules > 0 {
            if charge::cgroup::mount_point().is_none() {
                tracing::warn!(
                    "the policy has {rules} [[cgroup]] rule(s) but no cgroup2 hierarchy is mounted: the rules match the \
                     unified hierarchy's paths (the `0::` line of /proc/PID/cgroup), which are then all `/` or absent");
            } else {
                tracing::info!("policy: {rules} [[cgroup]] rule(s), matched against each client's cgroup at connect");
            }
        }
        let mut service = Service::new(config.policy, heaps, notifier, config.timing);
        service.scan_own_process = config.clients_in_process;
        if let Some(exe) = &config.charge_worker {
            service.charging = charge::Charging::new(exe, config.charge_worker_idle);
            service.charging.at_hello = config.charge_worker_at_hello;
        }
        let restored = persist::restore(&mut service, inherited);
        if restored > 0 {
            tracing::info!("restored {restored} publication(s) from the fd store");
        }
        let mut server = Server::new(listener, shutdown, service, config.max_clients, config.max_clients_per_uid)?;
        server.handshake_timeout = config.handshake_timeout;
        if let Some(n) = &mut server.service.notifier {
            let _ = n.notify(&format!("READY=1\nSTATUS=serving, {restored} publication(s) restored"), None);
        }
        Ok(Self { server, socket })
    }

    /// Serve until shutdown; then save state and remove the socket file
    /// (when the path is still the socket it bound).
    ///
    /// # Errors
    /// Only when epoll fails.
    pub fn run(&mut self) -> Result<(), RunError> {
        let result = self.server.run();
        if let Some(n) = &mut self.server.service.notifier {
            let _ = n.notify("STOPPING=1", None);
        }
        persist::save(&mut self.server.service);
        // The loop is over: waiting for the manager blocks no client now.
        if let Some(n) = &mut self.server.service.notifier {
            n.flush_for(std::time::Duration::from_secs(2));
        }
        // Only while the path is still the socket bound at start.
        if let Some(socket) = &self.socket {
            socket.remove();
        }
        result
    }

    /// The service (for tests).
    pub fn service(&self) -> &Service {
        &self.server.service
    }
}

/// The daemon's default socket: `/run/dmabroker/dmabroker.sock` as root,
/// else `$XDG_RUNTIME_DIR/dmabroker.sock` (where clients look).
///
/// # Errors
/// [`StartError::NoRuntimeDir`] for a non-root user without
/// `$XDG_RUNTIME_DIR`: a fixed name in a shared directory such as `/tmp`
/// could be taken by anyone first, and clients would not look there.
pub fn default_socket() -> Result<PathBuf, StartError> {
    let uid = rustix::process::getuid();
    if uid.is_root() {
        return Ok(dmabroker::proto::SYSTEM_SOCKET.into());
    }
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => Ok(Path::new(&dir).join("dmabroker.sock")),
        None => Err(StartError::NoRuntimeDir { uid: uid.as_raw() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::FileTypeExt;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("dmabroker-bind-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// Finding 10: a broker that has bound its socket but not yet called
    /// `listen` refuses connections like a stale socket; a second broker
    /// started at that moment replaced it, and both ran (the first
    /// unreachable). The lock taken before bind refuses the second.
    #[test]
    fn a_second_broker_started_at_the_same_time_is_refused() {
        let d = dir("race");
        let path = d.join("broker.sock");
        let first_lock = dmabroker::pool::PathLock::take(&path).unwrap().expect("free");
        let s =
            rustix::net::socket_with(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC, None).unwrap();
        rustix::net::bind(&s, &SocketAddrUnix::new(&path).unwrap()).unwrap();
        let inode = std::fs::symlink_metadata(&path).map(|m| std::os::unix::fs::MetadataExt::ino(&m)).unwrap();
        let e = bind(&path).unwrap_err();
        assert!(matches!(e, StartError::AlreadyRunning(_)), "{e}");
        let now = std::fs::symlink_metadata(&path).map(|m| std::os::unix::fs::MetadataExt::ino(&m)).unwrap();
        assert_eq!(now, inode, "the first broker's socket was replaced");
        drop(first_lock);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn only_a_stale_socket_is_ever_replaced() {
        let d = dir("kinds");
        // A regular file, a directory, a symbolic link (to a file): refused, left alone.
        let file = d.join("file");
        std::fs::write(&file, b"precious").unwrap();
        let e = bind(&file).unwrap_err();
        assert!(matches!(e, StartError::NotASocket { what: "a regular file", .. }), "{e}");
        assert!(e.to_string().contains(&file.display().to_string()), "{e}");
        assert_eq!(std::fs::read(&file).unwrap(), b"precious");
        let sub = d.join("dir");
        std::fs::create_dir(&sub).unwrap();
        assert!(matches!(bind(&sub), Err(StartError::NotASocket { what: "a directory", .. })));
        assert!(sub.is_dir());
        let link = d.join("link");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert!(matches!(bind(&link), Err(StartError::NotASocket { what: "a symbolic link", .. })));
        assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
        assert_eq!(std::fs::read(&file).unwrap(), b"precious");

        // Another program's live stream socket: refused, left alone.
        let stream = d.join("stream.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&stream).unwrap();
        let e = bind(&stream).unwrap_err();
        assert!(matches!(e, StartError::SocketInUse { .. }), "{e}");
        assert!(std::fs::symlink_metadata(&stream).unwrap().file_type().is_socket());

        // A live broker: refused.
        let live = d.join("live.sock");
        let (_fd, _bound) = bind(&live).unwrap();
        assert!(matches!(bind(&live), Err(StartError::AlreadyRunning(_))));

        // A stale socket (nobody listens: a crashed broker): replaced.
        let stale = d.join("stale.sock");
        drop(bind(&stale).unwrap());
        let (_fd, bound) = bind(&stale).unwrap();
        assert!(bound.is_still_there());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn at_exit_only_our_own_socket_is_removed() {
        let d = dir("exit");
        let path = d.join("b.sock");
        let mut config = Config::new(Listener::Path(path.clone()));
        config.notify = false;
        let (mut stop, stop_rx) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut broker = Broker::start(config, Vec::new(), stop_rx.into()).unwrap();
        // Someone moves the socket away and puts a file there meanwhile.
        std::fs::rename(&path, d.join("moved.sock")).unwrap();
        std::fs::write(&path, b"not yours").unwrap();
        let thread = std::thread::spawn(move || broker.run().unwrap());
        stop.write_all(b"x").unwrap();
        thread.join().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"not yours", "the broker removed a file that was not its socket");

        // Undisturbed, the socket is removed at exit.
        std::fs::remove_file(&path).unwrap();
        let mut config = Config::new(Listener::Path(path.clone()));
        config.notify = false;
        let (mut stop, stop_rx) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut broker = Broker::start(config, Vec::new(), stop_rx.into()).unwrap();
        let thread = std::thread::spawn(move || broker.run().unwrap());
        stop.write_all(b"x").unwrap();
        thread.join().unwrap();
        assert!(std::fs::symlink_metadata(&path).is_err(), "the broker left its socket behind");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn an_inherited_socket_must_be_a_listening_seqpacket_socket() {
        let d = dir("inherited");
        let stream: OwnedFd = std::os::unix::net::UnixListener::bind(d.join("s")).unwrap().into();
        let e = check_inherited_listener(&stream).unwrap_err();
        assert!(e.to_string().contains("ListenSequentialPacket="), "{e}");
        let (a, _b) =
            rustix::net::socketpair(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC, None).unwrap();
        let e = check_inherited_listener(&a).unwrap_err();
        assert!(e.to_string().contains("not listening") && e.to_string().contains("Accept=no"), "{e}");
        let (fd, _bound) = bind(&d.join("ok.sock")).unwrap();
        check_inherited_listener(&fd).unwrap();
        let file: OwnedFd = std::fs::File::open("/proc/self/status").unwrap().into();
        assert!(check_inherited_listener(&file).is_err());
        let _ = std::fs::remove_dir_all(&d);
    }
}
