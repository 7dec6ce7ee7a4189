//! `dmabroker bench compare`: an A/B of two builds from their `--json`
//! reports. `scripts/ab.sh` runs the two builds' benches interleaved
//! (A, B, A, B, ...) and hands the reports here in that order: run i of A
//! is paired with run i of B, and each row's B/A ratio is taken per pair,
//! so that drift between pairs cancels. Lower values are better in every
//! report (latencies, ns per MiB), so a ratio below 1 means B is faster.

use super::measure::{paired_ratios, JsonReport, Spread};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `dmabroker bench compare`.
#[derive(Debug, clap::Args)]
pub struct BenchCompareArgs {
    /// Reports of the baseline (A), in run order.
    #[arg(long, value_delimiter = ',', required = true)]
    pub a: Vec<PathBuf>,
    /// Reports of the build under test (B), in run order (paired with A's).
    #[arg(long, value_delimiter = ',', required = true)]
    pub b: Vec<PathBuf>,
    /// Only rows whose key contains this.
    #[arg(long)]
    pub filter: Option<String>,
}

fn read(paths: &[PathBuf]) -> anyhow::Result<Vec<JsonReport>> {
    paths
        .iter()
        .map(|p| {
            let text = std::fs::read_to_string(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
            // The report is the last line that parses (a bench may print
            // progress before it).
            text.lines()
                .rev()
                .find_map(|l| serde_json::from_str::<JsonReport>(l).ok())
                .ok_or_else(|| anyhow::anyhow!("{}: no `--json` report in it: run the bench with --json", p.display()))
        })
        .collect()
}

/// Row key -> that row's median value in each report (in order).
fn values(reports: &[JsonReport], filter: Option<&str>) -> BTreeMap<String, (String, Vec<f64>)> {
    let mut map: BTreeMap<String, (String, Vec<f64>)> = BTreeMap::new();
    for r in reports {
        for row in &r.rows {
            if filter.is_some_and(|f| !row.key.contains(f)) {
                continue;
            }
            map.entry(row.key.clone()).or_insert_with(|| (row.unit.clone(), Vec::new())).1.push(row.value.median);
        }
    }
    map
}

pub fn run(args: &BenchCompareArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.a.len() == args.b.len(),
        "--a has {} report(s), --b {}: give one B run per A run (they are paired in order)",
        args.a.len(),
        args.b.len()
    );
    let (a, b) = (read(&args.a)?, read(&args.b)?);
    let (va, vb) = (values(&a, args.filter.as_deref()), values(&b, args.filter.as_deref()));
    println!("{} A/B pair(s); B/A per pair, median and range (below 1: B is faster).\n", args.a.len());
    println!("| row | unit | A median | B median | B/A |");
    println!("|---|---|---|---|---|");
    for (key, (unit, xa)) in &va {
        let Some((_, xb)) = vb.get(key) else {
            println!("| {key} | {unit} | {:.0} | (not in B) | |", Spread::of(xa).median);
            continue;
        };
        let ratio = Spread::of(&paired_ratios(xb, xa));
        println!(
            "| {key} | {unit} | {:.0} | {:.0} | {} |",
            Spread::of(xa).median,
            Spread::of(xb).median,
            ratio.ratio()
        );
    }
    for key in vb.keys().filter(|k| !va.contains_key(*k)) {
        println!("| {key} | | (not in A) | {:.0} | |", Spread::of(&vb[key].1).median);
    }
    Ok(ExitCode::SUCCESS)
}
