//! `dmabroker demo`: a zero-copy streaming pool end to end.
//!
//! This process is the producer; it re-executes itself (`/proc/self/exe demo
//! --role consumer ...`, hidden arguments) for each consumer process. Each
//! consumer checks every frame against the checksum the producer put in the
//! ring entry's `meta` word and reports progress as JSON lines on its stdout,
//! which the producer turns into the live status line.
//!
//! Frames come from a source (`--source`): the first V4L2 capture device
//! (`/dev/video*` in order; the device fills the pool's buffers itself
//! through `V4L2_MEMORY_DMABUF`, so the pool's buffers are dma-bufs chosen
//! with the device's probed constraints), or a synthetic NV12 test pattern
//! the producer writes. `auto` takes the device when one is usable.
//!
//! `--through vulkan[:N]` (feature `vulkan`) routes each captured frame
//! through Vulkan device N ([`through_vulkan`]): the capture buffer is
//! imported as a `VkImage` (no CPU copy), the device writes a flipped copy
//! into the pool's buffer, and the frame carries the submission's
//! completion as a sync_file that consumers wait on.
//!
//! The transport is a parameter ([`DemoTransport`]): today a pool socket the
//! producer listens on; an embedded broker can become another variant without
//! touching the producer or consumer loops.
//!
//! The run ends after `--frames` frames, on SIGINT/SIGTERM (the stream is
//! closed in order and the socket removed; exit status 128 + the signal), or
//! as FAILED when every consumer is gone. `--json` prints the summary as one
//! JSON document on stdout. Memory does not grow with `--frames`: latency
//! percentiles come from a fixed log-scale histogram.

use dmabroker::pool::{Consumer, ConsumerOptions, Producer, WaitMode};
use std::path::PathBuf;
use std::process::ExitCode;

mod consumer;
mod histogram;
mod pattern;
mod producer;
mod report;
mod sink;
mod source;
#[cfg(feature = "vulkan")]
mod through_vulkan;
use consumer::run_consumer;
use producer::run_producer;

/// Arguments of `dmabroker demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Frames to stream.
    #[arg(long, default_value_t = 300)]
    pub frames: u64,
    /// Frame size WxH (NV12: W*H*3/2 bytes; W and H even). A V4L2 device
    /// may pick the nearest size it supports: the output says which.
    #[arg(long, default_value = "1920x1080", value_parser = parse_wh)]
    pub size: (u32, u32),
    /// Where frames come from: `auto` = the first V4L2 capture device when
    /// one is usable, else `synthetic`.
    #[arg(long, value_enum, default_value_t = SourceArg::Auto)]
    pub source: SourceArg,
    /// The V4L2 capture node (default: the first /dev/video* that captures).
    #[arg(long, value_name = "PATH")]
    pub device: Option<PathBuf>,
    /// Heap for the pool's buffers (see `dmabroker heaps`). Default: memfd
    /// for the synthetic source; for V4L2, the cheapest heap that meets the
    /// device's probed constraints (a dma-buf heap).
    #[arg(long)]
    pub heap: Option<String>,
    /// Buffers in the pool (4-8 suit video).
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub buffers: u32,
    /// Consumer processes.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=16))]
    pub consumers: u32,
    /// Frame rate to pace the producer at; 0 = as fast as the consumers go.
    #[arg(long, default_value_t = 0.0)]
    pub fps: f64,
    /// How the synthetic source gets its pool's buffers: `embedded` starts
    /// a dmabroker broker in this process on a temporary socket and
    /// allocates through its client API; `none` allocates directly.
    #[arg(long, value_enum, default_value_t = BrokerArg::Embedded)]
    pub broker: BrokerArg,
    /// What the producer does when consumers hold every buffer.
    #[arg(long, value_enum, default_value_t = PolicyArg::Block)]
    pub backpressure: PolicyArg,
    /// Show the frames on this KMS display (`/dev/dri/cardN`), zero copy:
    /// consumer 0 imports each pool buffer into the card once and puts
    /// every frame on the primary plane by an atomic commit; the summary
    /// reports frames shown, scanout rate and commit latency. Needs a V4L2
    /// source; the capture format is one the card's primary plane scans out
    /// (NV12, YUYV, else XR24 = XRGB8888), and the card's constraints join
    /// the camera's in the allocation. The card must not be driven by
    /// another process (DRM master).
    #[arg(long, value_name = "CARD")]
    pub sink: Option<PathBuf>,
    /// Route every frame through a GPU stage: `vulkan[:N]` imports each
    /// captured dma-buf into Vulkan device N (default 0) with no CPU copy;
    /// a transfer on the device writes the frame flipped vertically into
    /// the pool's buffer, and the frame carries the submission's completion
    /// as a sync_file, which consumers wait on before they read. Needs a
    /// V4L2 source capturing XR24 (XRGB8888) and a build with the cargo
    /// feature `vulkan`.
    #[arg(long, value_name = "vulkan[:N]", value_parser = parse_through)]
    pub through: Option<Through>,
    /// Print the summary as JSON on stdout (the live status stays on stderr).
    #[arg(long)]
    pub json: bool,
    /// Internal: run as a consumer process.
    #[arg(long, hide = true)]
    pub role: Option<String>,
    /// Internal: the consumer's pool socket.
    #[arg(long, hide = true)]
    pub socket: Option<PathBuf>,
    /// Internal: the consumer's number.
    #[arg(long, hide = true, default_value_t = 0)]
    pub id: u32,
    /// Internal: the consumer asks for the frames' sync_files and waits on
    /// them before reading (`--through`).
    #[arg(long, hide = true)]
    pub wait_fences: bool,
    /// Internal: the sink consumer's frame format (V4L2 fourcc).
    #[arg(long, hide = true)]
    pub sink_format: Option<String>,
    /// Internal: the sink consumer's frame pitch (bytes per line).
    #[arg(long, hide = true, default_value_t = 0)]
    pub sink_pitch: u32,
}

/// `--source` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SourceArg {
    /// V4L2 when a capture device is usable, else synthetic.
    Auto,
    /// The first V4L2 capture device (or `--device`); an error without one.
    V4l2,
    /// A synthetic NV12 test pattern written by the producer.
    Synthetic,
}

/// `--broker` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BrokerArg {
    /// Allocate through a broker started in this process.
    Embedded,
    /// Allocate from the heap directly.
    None,
}

/// `--backpressure` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PolicyArg {
    /// Wait for consumers (lossless).
    Block,
    /// Drop the oldest unread frame.
    DropOldest,
}

/// `--through` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Through {
    /// Vulkan physical device N (as `vulkaninfo --summary` numbers them).
    Vulkan(usize),
}

impl std::fmt::Display for Through {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Vulkan(n) => write!(f, "vulkan:{n}"),
        }
    }
}

fn parse_through(s: &str) -> Result<Through, String> {
    match s.split_once(':') {
        None if s == "vulkan" => Ok(Through::Vulkan(0)),
        Some(("vulkan", n)) => n.parse().map(Through::Vulkan).map_err(|_| {
            format!(
                "`{s}`: the Vulkan device is vulkan:N with N its index (vulkan:0; `vulkaninfo --summary` lists them)"
            )
        }),
        _ => Err(format!("`{s}`: the stage is vulkan or vulkan:N")),
    }
}

/// `--through` in a build without the stage: say how to get it.
fn check_through(args: &DemoArgs) -> anyhow::Result<()> {
    match args.through {
        Some(t) if !cfg!(feature = "vulkan") => anyhow::bail!(
            "--through {t}: this dmabroker was built without Vulkan support; rebuild it with \
             `cargo build --release -p dmabroker-cli --features vulkan` (dynamically linked: a +crt-static \
             binary cannot load libvulkan.so.1)"
        ),
        _ => Ok(()),
    }
}

fn parse_wh(s: &str) -> Result<(u32, u32), String> {
    let (w, h) = s.split_once(['x', 'X']).ok_or_else(|| format!("`{s}`: expected WIDTHxHEIGHT, e.g. 1920x1080"))?;
    let parse = |v: &str| v.trim().parse::<u32>().map_err(|_| format!("`{v}` is not a number"));
    let (w, h) = (parse(w)?, parse(h)?);
    if w == 0 || h == 0 || w % 2 != 0 || h % 2 != 0 {
        return Err(format!("{w}x{h}: NV12 needs a non-zero even width and height"));
    }
    if u64::from(w) * u64::from(h) > 1 << 28 {
        return Err(format!("{w}x{h} is larger than 16384x16384"));
    }
    Ok((w, h))
}

/// How the demo's consumers reach the producer.
#[derive(Debug, Clone)]
pub enum DemoTransport {
    /// The producer listens on a pool socket at this path.
    PoolSocket(PathBuf),
}

impl DemoTransport {
    /// A socket under `$XDG_RUNTIME_DIR` (or the temp dir), unique to this process.
    pub fn default_socket() -> Self {
        let dir = std::env::var_os("XDG_RUNTIME_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
        Self::PoolSocket(dir.join(format!("dmabroker-demo-{}.sock", std::process::id())))
    }

    fn serve(&self, producer: &mut Producer) -> anyhow::Result<()> {
        match self {
            Self::PoolSocket(path) => {
                producer.listen(path)?;
            }
        }
        Ok(())
    }

    fn consumer_args(&self) -> Vec<String> {
        match self {
            Self::PoolSocket(path) => vec!["--socket".into(), path.display().to_string()],
        }
    }

    fn connect(args: &DemoArgs) -> anyhow::Result<Consumer> {
        let path = args.socket.as_ref().ok_or_else(|| anyhow::anyhow!("--role consumer needs --socket"))?;
        let options =
            ConsumerOptions { wait: WaitMode::default(), want_sync_files: args.wait_fences, ..Default::default() };
        Ok(Consumer::connect_with(path, &options)?)
    }
}

pub fn run(args: &DemoArgs) -> anyhow::Result<ExitCode> {
    match args.role.as_deref() {
        None => {
            check_through(args).and_then(|()| run_producer(args, &DemoTransport::default_socket())).inspect_err(|e| {
                // A run that fails before it streams still owes --json readers a
                // document (the error goes to stderr as well).
                if args.json {
                    let _ = crate::output::print_json(
                        &serde_json::json!({ "result": "FAILED", "error": crate::error_chain(e) }),
                    );
                }
            })
        }
        Some("consumer") => run_consumer(args),
        Some(other) => anyhow::bail!("unknown demo role `{other}`"),
    }
}

#[cfg(test)]
mod tests;
