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
//! | [`holders`] | who else holds a buffer (dma-buf counts, `/proc` scans) |
//! | [`policy`] | the TOML policy |
//! | [`peer`] | `SO_PEERCRED` + pidfd |
//! | [`notify`], [`persist`] | `sd_notify`, the fd store, restarts |
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod holders;
pub mod notify;
pub mod peer;
pub mod persist;
pub mod policy;
pub mod refusal;
pub mod registry;
pub mod server;
pub mod service;

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
    /// Bind this path (a stale socket file is replaced; a live one is an error).
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
    /// Talk to the service manager (`$NOTIFY_SOCKET`) when it is set.
    pub notify: bool,
    /// Clients run inside the broker's own process (tests, embedding): count
    /// this process's fds and mappings as holders too.
    pub clients_in_process: bool,
}

impl Config {
    /// Defaults: the built-in policy, 8192 clients (4096 per uid), notify when run by a manager.
    pub fn new(listener: Listener) -> Self {
        Self {
            listener,
            policy: Policy::builtin(rustix::process::getuid().as_raw()),
            max_clients: 8192,
            max_clients_per_uid: 4096,
            timing: SweepTiming::default(),
            notify: true,
            clients_in_process: false,
        }
    }
}

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Another broker answers on the path.
    #[error("a broker is already running on {0}: stop it, or pass another --socket")]
    AlreadyRunning(PathBuf),
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

/// The daemon: a [`Server`] plus what it must undo at exit.
#[derive(Debug)]
pub struct Broker {
    server: Server,
    socket_path: Option<PathBuf>,
}

/// `socket(AF_UNIX, SOCK_SEQPACKET)` + `bind` + `listen`, mode 0666 (access
/// is decided by the policy, per uid, not by file permissions).
///
/// # Errors
/// [`StartError`].
pub fn bind(path: &Path) -> Result<OwnedFd, StartError> {
    let bind_err = |source, hint| StartError::Bind { path: path.to_owned(), source, hint };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| bind_err(Errno::from_io_error(&e).unwrap_or(Errno::IO), ": cannot create its directory"))?;
    }
    let socket = rustix::net::socket_with(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC, None)
        .map_err(|e| bind_err(e, ""))?;
    let addr = SocketAddrUnix::new(path).map_err(|e| bind_err(e, ": path too long for a Unix socket (108 bytes)"))?;
    match rustix::net::bind(&socket, &addr) {
        Ok(()) => {}
        Err(Errno::ADDRINUSE) => {
            // A live broker answers; a stale file from a crash refuses.
            let probe =
                rustix::net::socket_with(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC, None)
                    .map_err(|e| bind_err(e, ""))?;
            if rustix::net::connect(&probe, &addr).is_ok() {
                return Err(StartError::AlreadyRunning(path.to_owned()));
            }
            let _ = std::fs::remove_file(path);
            rustix::net::bind(&socket, &addr).map_err(|e| bind_err(e, ""))?;
        }
        Err(e @ (Errno::ACCESS | Errno::PERM)) => {
            return Err(bind_err(e, ": run as root for /run/dmabroker, or pass --socket"))
        }
        Err(e) => return Err(bind_err(e, "")),
    }
    let _ = rustix::fs::chmod(path, rustix::fs::Mode::from_raw_mode(0o666));
    rustix::net::listen(&socket, 1024).map_err(|e| bind_err(e, ""))?;
    Ok(socket)
}

impl Broker {
    /// Set up: bind (or adopt) the socket, restore stored buffers from
    /// `inherited` (the fd store), and tell the service manager it is ready.
    /// `shutdown` becoming readable stops [`Broker::run`].
    ///
    /// # Errors
    /// [`StartError`].
    pub fn start(config: Config, inherited: Vec<InheritedFd>, shutdown: OwnedFd) -> Result<Self, StartError> {
        let (listener, socket_path) = match config.listener {
            Listener::Path(p) => (bind(&p)?, Some(p)),
            Listener::Inherited(fd) => (fd, None),
        };
        let notifier = if config.notify { notify::Notifier::from_env() } else { None };
        let mut service = Service::new(config.policy, Heaps::discover(), notifier, config.timing);
        service.scan_own_process = config.clients_in_process;
        let restored = persist::restore(&mut service, inherited);
        if restored > 0 {
            tracing::info!("restored {restored} publication(s) from the fd store");
        }
        let mut server = Server::new(listener, shutdown, service, config.max_clients, config.max_clients_per_uid)?;
        if let Some(n) = &mut server.service.notifier {
            let _ = n.notify(&format!("READY=1\nSTATUS=serving, {restored} publication(s) restored"), None);
        }
        Ok(Self { server, socket_path })
    }

    /// Serve until shutdown; then save state and remove the socket file.
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
        if let Some(p) = &self.socket_path {
            let _ = std::fs::remove_file(p);
        }
        result
    }

    /// The service (for tests).
    pub fn service(&self) -> &Service {
        &self.server.service
    }
}

/// The daemon's default socket: `/run/dmabroker/dmabroker.sock` as root,
/// else `$XDG_RUNTIME_DIR/dmabroker.sock`.
pub fn default_socket() -> PathBuf {
    if rustix::process::getuid().is_root() {
        return dmabroker::proto::SYSTEM_SOCKET.into();
    }
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => Path::new(&dir).join("dmabroker.sock"),
        None => std::env::temp_dir().join(format!("dmabroker-{}.sock", rustix::process::getuid().as_raw())),
    }
}
