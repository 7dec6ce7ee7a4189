//! `dmabroker serve`: the broker daemon.
//!
//! Listens on `--socket`, or on the socket systemd passes (socket
//! activation, `LISTEN_FDS`), or on the default path
//! (`/run/dmabroker/dmabroker.sock` as root, `$XDG_RUNTIME_DIR/dmabroker.sock`
//! otherwise; without `$XDG_RUNTIME_DIR` a non-root broker needs `--socket`).
//! Whatever is at the path is only replaced when it is a stale socket.
//! Published buffers handed to systemd's fd store come back
//! through `LISTEN_FDS` too. SIGTERM and SIGINT stop it gracefully.

use dmabroker_broker::{Broker, Config, Listener, Policy, SweepTiming};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// The policy read when `--policy` is not given, if it exists.
const DEFAULT_POLICY: &str = "/etc/dmabroker/policy.toml";

/// Arguments of `dmabroker serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Socket path [default: /run/dmabroker/dmabroker.sock as root, else
    /// $XDG_RUNTIME_DIR/dmabroker.sock]; ignored under socket activation.
    /// Only a stale socket at PATH is replaced, never any other file.
    #[arg(long, value_parser = crate::cli::parse_socket_path)]
    pub socket: Option<PathBuf>,
    /// Policy file (TOML) [default: /etc/dmabroker/policy.toml if present,
    /// else: root and the broker's own user may do everything, others only import].
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Most clients connected at once (at least 1).
    #[arg(long, default_value_t = 8192, value_parser = crate::cli::parse_at_least_one)]
    pub max_clients: usize,
    /// Most clients of one user connected at once, so that one user cannot
    /// take every slot [default: half of --max-clients].
    #[arg(long, value_parser = crate::cli::parse_at_least_one)]
    pub max_clients_per_user: Option<usize>,
    /// Period of the background check for buffers nobody holds any more, in ms.
    #[arg(long, default_value_t = 2000)]
    pub sweep_interval_ms: u64,
    /// With dma_heap.mem_accounting=1, dma-heap allocations are made by a
    /// worker in each client's cgroup: how long an unused one is kept, in ms.
    #[arg(long, default_value_t = 30_000)]
    pub charge_worker_idle_ms: u64,
    /// Start a client's allocation worker at its first allocation instead of
    /// when it connects (the behaviour before; for measuring the difference).
    #[arg(long, hide = true)]
    pub charge_worker_on_first_request: bool,
}

pub fn run(args: &ServeArgs) -> anyhow::Result<ExitCode> {
    // First, before anything else opens files: fds from the service manager.
    #[allow(unsafe_code)]
    // SAFETY: `serve` runs straight from main, still single-threaded, and no
    // code before it adopted or closed an inherited descriptor (clap and
    // the log setup open none): the LISTEN_FDS numbers are ours alone.
    let inherited = unsafe { dmabroker_sys::inherited::take_listen_fds() };
    raise_fd_limit();
    let uid = rustix::process::getuid().as_raw();
    let policy = match &args.policy {
        Some(p) => Policy::load(p, uid)?,
        None if std::path::Path::new(DEFAULT_POLICY).exists() => Policy::load(DEFAULT_POLICY.as_ref(), uid)?,
        None => Policy::builtin(uid),
    };
    // Buffers in the fd store are memfds and dma-bufs: a socket is the
    // listening socket of the .socket unit (checked by Broker::start to be
    // a listening SOCK_SEQPACKET socket).
    let (sockets, stored): (Vec<_>, Vec<_>) = inherited.into_iter().partition(|f| is_socket(&f.fd));
    if sockets.len() > 1 {
        anyhow::bail!(
            "the service manager passed {} sockets: the .socket unit must have exactly one \
             ListenSequentialPacket= line",
            sockets.len()
        );
    }
    let listener = match (sockets.into_iter().next(), &args.socket) {
        (Some(f), _) => Listener::Inherited(f.fd),
        (None, Some(p)) => Listener::Path(p.clone()),
        (None, None) => Listener::Path(dmabroker_broker::default_socket()?),
    };
    let where_ = match &listener {
        Listener::Path(p) => p.display().to_string(),
        Listener::Inherited(_) => "the socket passed by the service manager".into(),
    };
    let mut config = Config::new(listener);
    config.policy = policy;
    config.max_clients = args.max_clients;
    config.max_clients_per_uid = args.max_clients_per_user.unwrap_or((args.max_clients / 2).max(1));
    config.timing =
        SweepTiming { interval: Duration::from_millis(args.sweep_interval_ms.max(10)), ..SweepTiming::default() };
    config.charge_worker = Some(PathBuf::from("/proc/self/exe"));
    config.charge_worker_idle = Duration::from_millis(args.charge_worker_idle_ms.max(10));
    config.charge_worker_at_hello = !args.charge_worker_on_first_request;
    let mut broker = Broker::start(config, stored, shutdown_on_signals()?)?;
    tracing::info!("serving on {where_}");
    eprintln!("dmabroker: serving on {where_}");
    broker.run()?;
    Ok(ExitCode::SUCCESS)
}

/// A socket that becomes readable on SIGTERM or SIGINT: signal-hook writes a
/// byte to it from the handler (async-signal-safe), and the event loop polls it.
fn shutdown_on_signals() -> anyhow::Result<OwnedFd> {
    let (rx, tx) = std::os::unix::net::UnixStream::pair()?;
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::low_level::pipe::register(signal, tx.try_clone()?)?;
    }
    Ok(rx.into())
}

fn is_socket(fd: &OwnedFd) -> bool {
    rustix::fs::fstat(fd)
        .is_ok_and(|st| rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Socket)
}

/// Every client connection and every held buffer is an fd: use the hard limit.
fn raise_fd_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        limit.current = limit.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            tracing::warn!("cannot raise RLIMIT_NOFILE: {e}");
        }
    }
}
