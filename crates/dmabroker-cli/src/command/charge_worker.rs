//! `dmabroker charge-worker` (hidden): the allocation worker the broker
//! starts inside a client's cgroup (see `dmabroker_broker::charge`); its
//! fd 3 is a socket to the broker. Not for people to run.

use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `dmabroker charge-worker`.
#[derive(Debug, clap::Args)]
pub struct ChargeWorkerArgs {
    /// The cgroup2 mount.
    #[arg(long)]
    pub cgroup_root: PathBuf,
    /// This worker's cgroup, relative to the mount.
    #[arg(long)]
    pub cgroup: String,
}

pub fn run(args: &ChargeWorkerArgs) -> anyhow::Result<ExitCode> {
    #[allow(unsafe_code)]
    // SAFETY: straight from main, single-threaded, nothing opened an fd
    // before (clap and the log setup open none): fd 3 is what the broker
    // passed (spawn_in_cgroup's CHILD_FD), owned by nobody else.
    let socket = unsafe { dmabroker_sys::spawn::take_child_fd() };
    let Some(socket) = socket else {
        anyhow::bail!("charge-worker is started by `dmabroker serve` with a socket as fd 3; it is not run by hand");
    };
    dmabroker_broker::charge::work::serve(socket, &args.cgroup_root, &args.cgroup)?;
    Ok(ExitCode::SUCCESS)
}
