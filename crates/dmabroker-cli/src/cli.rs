//! Command-line syntax.

use crate::command::{
    bench_broker, bench_compare, bench_ledger, bench_pool, bench_sync, charge_worker, demo, import, ps, serve, stats,
    top, unpublish,
};
use clap::{ArgGroup, Args, Parser, Subcommand};

/// User-space buffer allocation and sharing for Linux: dma-heaps, udmabuf,
/// sealed memfd and hugetlb behind one API, a broker daemon, streaming pools.
#[derive(Debug, Parser)]
#[command(name = "dmabroker", version, propagate_version = true)]
pub struct Cli {
    /// More log output (-v info, -vv debug, -vvv trace), on stderr.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The verbs.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List the allocators of this machine and what each can do.
    Heaps(HeapsArgs),
    /// Allocate a buffer and print what was allocated.
    Alloc(AllocArgs),
    /// Tell what an open fd of a process is (dma-buf, memfd, ...).
    #[command(after_help = "Exit status:\n  \
                            0  the fd is a buffer (dma-buf or memfd)\n  \
                            3  the fd exists but is not a buffer, or could not be copied to classify it \
                            (the reason is printed; with --json in `not_a_buffer`)\n  \
                            1  error: no such process, no such fd, permission denied\n  \
                            2  usage error")]
    Inspect(InspectArgs),
    /// Run the broker daemon (allocation service, sharing, quotas, accounting).
    Serve(serve::ServeArgs),
    /// Import a buffer published through the broker, by name or token.
    Import(import::ImportArgs),
    /// Withdraw a buffer published through the broker.
    Unpublish(unpublish::UnpublishArgs),
    /// What the broker charges you, your quota, and the broker's totals.
    Stats(stats::StatsArgs),
    /// Who holds what: every dma-buf and dmabroker buffer per process and user.
    Ps(ps::PsArgs),
    /// A live view of buffer memory per process, user and cgroup (`--json` streams it).
    Top(top::TopArgs),
    /// A zero-copy streaming pool end to end: producer, two consumers, live status.
    Demo(demo::DemoArgs),
    /// Run a benchmark and print a markdown table.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// The broker's allocation worker in a client's cgroup (started by `serve`).
    #[command(hide = true)]
    ChargeWorker(charge_worker::ChargeWorkerArgs),
}

/// `dmabroker heaps`.
#[derive(Debug, Args)]
pub struct HeapsArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Find the largest contiguous buffer each CMA heap can allocate now, by
    /// allocating and at once freeing buffers (a binary search in 1 MiB
    /// steps up to the area's free bytes; needs access to the heap).
    #[arg(long)]
    pub probe_contiguous: bool,
}

/// `dmabroker alloc`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("share").args(["publish", "token"])))]
pub struct AllocArgs {
    /// Heap to allocate from (see `dmabroker heaps`) [default: memfd, or with
    /// device options the cheapest heap that meets them].
    #[arg(long)]
    pub heap: Option<String>,
    /// Size: 4096, 4K, 12MiB, 1G, 0x1000 (hexadecimal bytes)..., or WIDTHxHEIGHT with --format.
    #[arg(long, value_parser = crate::command::alloc_for::parse_size_spec)]
    pub size: crate::command::alloc_for::SizeSpec,
    /// Require physically contiguous memory.
    #[arg(long)]
    pub contiguous: bool,
    /// Required start alignment in bytes (power of two: 1, 4K, 2M...).
    #[arg(long, value_parser = parse_power_of_two, default_value = "1")]
    pub align: u64,
    /// Buffer name (shown in /proc fdinfo and `dmabroker ps`).
    #[arg(long)]
    pub name: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Device-aware allocation: formats, devices, explicit constraints.
    #[command(flatten)]
    pub device: crate::command::alloc_for::DeviceArgs,
    /// Allocate through the broker daemon instead of in this process.
    #[arg(long)]
    pub broker: bool,
    /// Publish the buffer under this name (implies --broker). The broker keeps
    /// published buffers alive, so this command exits right after publishing.
    #[arg(long, conflicts_with = "token")]
    pub publish: Option<String>,
    /// Publish under an unguessable token, printed (implies --broker).
    #[arg(long)]
    pub token: bool,
    /// Who else may import the publication: uid=N[:ro|rw], gid=N[:ro|rw], any[:ro|rw] (repeatable; default access ro).
    #[arg(long = "allow", value_name = "GRANT", requires = "share")]
    pub allow: Vec<dmabroker::proto::Grant>,
    /// Withdraw the publication after its first import by another user.
    #[arg(long, requires = "share")]
    pub one_shot: bool,
    /// Withdraw the publication after this many seconds (1 to 315360000, ten years).
    #[arg(long, value_name = "SECONDS", requires = "share", value_parser = parse_expires)]
    pub expires: Option<u64>,
    /// Broker socket [default: $XDG_RUNTIME_DIR/dmabroker.sock if present, else /run/dmabroker/dmabroker.sock].
    #[arg(long, env = "DMABROKER_SOCKET", value_parser = parse_client_socket)]
    pub socket: Option<std::path::PathBuf>,
}

/// `dmabroker inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Process id.
    #[arg(long)]
    pub pid: u32,
    /// File descriptor number in that process.
    #[arg(long)]
    pub fd: i32,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `dmabroker bench ...`.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Allocation + map + first touch per heap, against the raw system calls.
    Alloc(BenchAllocArgs),
    /// Allocation through the broker against in-process allocation; concurrency; memory per buffer.
    Broker(bench_broker::BenchBrokerArgs),
    /// Frame handoff through a pool against socket copying (and iceoryx2 in benches/).
    Pool(bench_pool::BenchPoolArgs),
    /// CPU cache maintenance: dmabroker's guards vs the bare instructions vs DMA_BUF_IOCTL_SYNC.
    Sync(bench_sync::BenchSyncArgs),
    /// Listing N dma-bufs through the dma-buf BPF iterator against the `/proc` fdinfo scan.
    Ledger(bench_ledger::BenchLedgerArgs),
    /// Compare `--json` reports of two builds (A/B): per row, B/A with its spread (scripts/ab.sh).
    Compare(bench_compare::BenchCompareArgs),
}

/// `dmabroker bench alloc`.
#[derive(Debug, Args)]
pub struct BenchAllocArgs {
    /// Sizes to measure (each at least one byte).
    #[arg(long, value_delimiter = ',', value_parser = parse_nonzero_size, default_value = "4K,1M,12M,64M")]
    pub sizes: Vec<u64>,
    /// Heaps to measure (default: every usable heap).
    #[arg(long, value_delimiter = ',')]
    pub heaps: Vec<String>,
    /// Scale the iteration counts (1.0 = default; a finite number above 0).
    #[arg(long, default_value_t = 1.0, value_parser = parse_scale)]
    pub scale: f64,
    /// Control run (A/A): measure the raw path against itself in the
    /// library's place, to show what the method alone reports as overhead.
    #[arg(long)]
    pub control: bool,
    /// Print one JSON report (for `bench compare` / scripts/ab.sh) instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// The longest path a Unix socket address holds (`sun_path` is 108 bytes,
/// with the terminating NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// clap value parser for a socket path: at most [`MAX_SOCKET_PATH`] bytes.
pub fn parse_socket_path(s: &str) -> Result<std::path::PathBuf, String> {
    if s.is_empty() {
        return Err("an empty socket path: give a path".to_owned());
    }
    if s.len() > MAX_SOCKET_PATH {
        return Err(format!(
            "the socket path is {} bytes, over the {MAX_SOCKET_PATH} a Unix socket address holds: \
             use a shorter path (e.g. in /run or $XDG_RUNTIME_DIR, or through a shorter symlinked directory)",
            s.len()
        ));
    }
    Ok(s.into())
}

/// clap value parser for a client's `--socket` (also `$DMABROKER_SOCKET`):
/// empty (a variable set but empty) means the default socket.
pub fn parse_client_socket(s: &str) -> Result<std::path::PathBuf, String> {
    if s.is_empty() {
        return Ok(dmabroker::proto::default_client_socket());
    }
    parse_socket_path(s)
}

/// clap value parser for `--expires`: 1 second to [`dmabroker::proto::MAX_EXPIRY_SECS`].
fn parse_expires(s: &str) -> Result<u64, String> {
    let max = dmabroker::proto::MAX_EXPIRY_SECS;
    let secs: u64 = s.trim().parse().map_err(|_| format!("`{s}` is not a number of seconds (e.g. 60)"))?;
    match secs {
        0 => Err("0 seconds would withdraw the publication at once: give at least 1".to_owned()),
        n if n > max => Err(format!("{n} seconds is more than the broker keeps a publication ({max}, ten years)")),
        n => Ok(n),
    }
}

/// clap value parser for a count of at least 1 (`serve --max-clients`).
pub fn parse_at_least_one(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err("0 would refuse every client: give at least 1".to_owned()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("`{s}` is not a number (e.g. 64)")),
    }
}

/// clap value parser for alignments: a size that is a power of two (not 0).
pub fn parse_power_of_two(s: &str) -> Result<u64, String> {
    let value = dmabroker::size::parse_size(s).map_err(|e| e.to_string())?;
    if !value.is_power_of_two() {
        return Err(format!("alignment {value} is not a power of two: give 1, 2, 4, ... bytes (e.g. 64, 4K, 2M)"));
    }
    Ok(value)
}

/// clap value parser for `bench alloc --sizes`: a size of at least one byte.
fn parse_nonzero_size(s: &str) -> Result<u64, String> {
    match dmabroker::size::parse_size(s).map_err(|e| e.to_string())? {
        0 => Err("size 0: a buffer needs at least one byte (e.g. 4K)".to_owned()),
        n => Ok(n),
    }
}

/// clap value parser for `bench alloc --scale`: a finite number above 0.
fn parse_scale(s: &str) -> Result<f64, String> {
    let value: f64 = s.trim().parse().map_err(|_| format!("`{s}` is not a number: give e.g. 0.5 or 2"))?;
    if !value.is_finite() || value <= 0.0 {
        return Err(format!("scale {value} must be a finite number above 0 (e.g. 0.5 or 2)"));
    }
    Ok(value)
}

/// clap value parser for a bench's `--seconds`: a finite number of seconds
/// above 0 and at most a day (`Duration::from_secs_f64` panics on a negative,
/// NaN or overflowing value, so it never sees one).
pub fn parse_seconds(s: &str) -> Result<f64, String> {
    const MAX: f64 = 86_400.0;
    let value: f64 = s.trim().parse().map_err(|_| format!("`{s}` is not a number of seconds: give e.g. 0.5 or 2"))?;
    if !value.is_finite() || value <= 0.0 || value > MAX {
        return Err(format!("{value} seconds: give a finite number above 0 and at most {MAX} (a day), e.g. 1"));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_seconds_are_finite_positive_and_bounded() {
        assert_eq!(parse_seconds("0.5"), Ok(0.5));
        for bad in ["-1", "0", "NaN", "inf", "1e300", "lots"] {
            assert!(parse_seconds(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn alignments_are_powers_of_two() {
        assert_eq!(parse_power_of_two("4K"), Ok(4096));
        assert_eq!(parse_power_of_two("1"), Ok(1));
        assert!(parse_power_of_two("0").unwrap_err().contains("not a power of two"));
        assert!(parse_power_of_two("3").unwrap_err().contains("not a power of two"));
    }

    #[test]
    fn scales_are_finite_and_positive() {
        assert_eq!(parse_scale("0.5"), Ok(0.5));
        for bad in ["0", "-1", "NaN", "inf", "-inf", "x"] {
            assert!(parse_scale(bad).is_err(), "{bad}");
        }
        assert!(parse_nonzero_size("0").is_err());
        assert_eq!(parse_nonzero_size("4K"), Ok(4096));
    }

    #[test]
    fn expiries_and_socket_paths_are_checked_up_front() {
        assert_eq!(parse_expires("60"), Ok(60));
        assert!(parse_expires("0").unwrap_err().contains("at least 1"));
        assert!(parse_expires("400000000").unwrap_err().contains("ten years"));
        assert_eq!(parse_client_socket(""), Ok(dmabroker::proto::default_client_socket()));
        assert_eq!(parse_client_socket("/run/x.sock"), Ok("/run/x.sock".into()));
        let long = format!("/tmp/{}", "d".repeat(120));
        assert!(parse_client_socket(&long).unwrap_err().contains("shorter path"));
        assert!(parse_socket_path("").is_err());
    }

    #[test]
    fn sharing_options_need_a_publication() {
        use clap::Parser;
        for extra in [&["--allow", "uid=5"][..], &["--one-shot"], &["--expires", "60"]] {
            let mut args = vec!["dmabroker", "alloc", "--size", "4K"];
            args.extend_from_slice(extra);
            let e = Cli::try_parse_from(&args).unwrap_err().to_string();
            assert!(e.contains("--publish") || e.contains("--token"), "{extra:?}: {e}");
            args.extend_from_slice(&["--publish", "x"]);
            assert!(Cli::try_parse_from(&args).is_ok(), "{args:?}");
        }
        let e = Cli::try_parse_from(["dmabroker", "import", "k", "--list"]).unwrap_err().to_string();
        assert!(e.contains("cannot be used with"), "{e}");
        assert!(Cli::try_parse_from(["dmabroker", "serve", "--max-clients", "0"]).is_err());
        assert!(Cli::try_parse_from(["dmabroker", "serve", "--max-clients", "1"]).is_ok());
    }
}
