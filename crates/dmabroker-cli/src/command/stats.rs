//! `dmabroker stats`: what the broker charges this user, its quota, and the
//! broker's totals; from protocol version 4 the client's cgroup and the
//! policy's `[[cgroup]]` rules for it, with their quotas and use.

use crate::output::{emit, print_json};
use dmabroker::client::Client;
use dmabroker::proto::CgroupStats;
use dmabroker::size::format_size;
use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `dmabroker stats`.
#[derive(Debug, clap::Args)]
pub struct StatsArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Broker socket [default: $XDG_RUNTIME_DIR/dmabroker.sock if present, else /run/dmabroker/dmabroker.sock].
    #[arg(long, env = "DMABROKER_SOCKET", value_parser = crate::cli::parse_client_socket)]
    pub socket: Option<PathBuf>,
}

pub fn run(args: &StatsArgs) -> anyhow::Result<ExitCode> {
    let path = args.socket.clone().unwrap_or_else(dmabroker::proto::default_client_socket);
    let (stats, cgroup) = Client::connect(&path)?.stats_with_cgroup()?;
    // The kernel's side, read here (the broker runs on this machine): whether
    // dma-heap memory is charged to cgroups at all.
    let accounting = dmabroker::heap::mem_accounting::MemAccounting::detect();
    let target = dmabroker::heap::charge_target::ChargeTarget::probe();
    if args.json {
        let mut value = serde_json::to_value(&stats)?;
        if let Some(map) = value.as_object_mut() {
            map.insert("dma_heap_mem_accounting".into(), serde_json::to_value(accounting)?);
            map.insert("dma_heap_charging".into(), accounting.describe().into());
            map.insert("dma_heap_charge_target".into(), serde_json::to_value(&target)?);
            map.insert(
                "dma_heap_charging_mechanism".into(),
                dmabroker::heap::charge_target::mechanism(accounting, &target).into(),
            );
            // Absent from brokers before protocol version 4.
            if let Some(c) = &cgroup {
                map.insert("cgroup".into(), serde_json::to_value(c)?);
            }
        }
        print_json(&value)?;
        return Ok(ExitCode::SUCCESS);
    }
    emit(&format!(
        "uid {}: {} in {} buffer(s) of a quota of {} in {} buffer(s); heaps: {}; may publish: {}\n\
         broker: {} buffer(s), {}, {} publication(s), {} client(s) connected\n\
         charging: {}\nkernel charge target: {}\ncharging mechanism: {}\n{}",
        stats.uid,
        format_size(stats.used_bytes),
        stats.used_buffers,
        format_size(stats.max_bytes),
        stats.max_buffers,
        if stats.heaps.is_empty() { "none".to_owned() } else { stats.heaps.join(", ") },
        if stats.may_publish { "yes" } else { "no" },
        stats.total_buffers,
        format_size(stats.total_bytes),
        stats.publications,
        stats.clients,
        accounting.describe(),
        target.describe(),
        dmabroker::heap::charge_target::mechanism(accounting, &target),
        cgroup.as_ref().map(describe_cgroup).unwrap_or_default(),
    ))?;
    Ok(ExitCode::SUCCESS)
}

/// The `cgroup` line and one line per matching policy rule.
fn describe_cgroup(c: &CgroupStats) -> String {
    let mut out = match (&c.path, &c.unknown) {
        (Some(p), _) => {
            format!("cgroup {p}: {} in {} buffer(s) through the broker\n", format_size(c.used_bytes), c.used_buffers)
        }
        (None, why) => format!(
            "cgroup: unknown ({}){}\n",
            why.as_deref().unwrap_or("not read"),
            if c.refused { "; the policy refuses allocating and publishing (cgroup_unknown = \"refuse\")" } else { "" }
        ),
    };
    for r in &c.rules {
        let quota = match (r.max_bytes, r.max_buffers) {
            (None, None) => "no quota".to_owned(),
            (b, n) => format!(
                "quota {} / {} buffers",
                b.map_or("unlimited".to_owned(), format_size),
                n.map_or("unlimited".to_owned(), |n| n.to_string())
            ),
        };
        let heaps = match &r.heaps {
            None => String::new(),
            Some(h) if h.is_empty() => "; heaps: none".to_owned(),
            Some(h) => format!("; heaps: {}", h.join(", ")),
        };
        out.push_str(&format!(
            "  rule `{}` (policy line {}): {} holds {} in {} buffer(s), {quota}{heaps}{}\n",
            r.rule,
            r.line,
            r.unit,
            format_size(r.used_bytes),
            r.used_buffers,
            if r.publish == Some(false) { "; publishing denied" } else { "" }
        ));
    }
    out
}
