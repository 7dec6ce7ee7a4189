//! `dmabroker import`: import a published buffer and print what it is.

use crate::output::print_json;
use dmabroker::client::Client;
use dmabroker::size::format_size;
use serde::Serialize;
use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `dmabroker import`.
#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// Publication name, or token (`@` + 32 hex digits).
    #[arg(required_unless_present = "list")]
    pub key: Option<String>,
    /// List what this user may import instead.
    #[arg(long, conflicts_with = "key")]
    pub list: bool,
    /// Broker socket [default: $XDG_RUNTIME_DIR/dmabroker.sock if present, else /run/dmabroker/dmabroker.sock].
    #[arg(long, env = "DMABROKER_SOCKET", value_parser = crate::cli::parse_client_socket)]
    pub socket: Option<PathBuf>,
    /// Also try to map it writable and report the outcome (shows a read-only grant at work).
    #[arg(long)]
    pub check_write: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct ImportReport {
    key: String,
    access: String,
    publisher_uid: u32,
    buffer: dmabroker::buffer::BufferInfo,
    writable_mapping: Option<String>,
}

/// One entry of `import --list --json`.
#[derive(Serialize)]
struct ListReport<'a> {
    key: &'a str,
    len: u64,
    heap: &'a str,
    publisher_uid: u32,
    access: String,
    one_shot: bool,
    expires_in_secs: Option<u64>,
}

pub fn run(args: &ImportArgs) -> anyhow::Result<ExitCode> {
    let path = args.socket.clone().unwrap_or_else(dmabroker::proto::default_client_socket);
    let mut client = Client::connect(&path)?;
    if args.list {
        let (entries, truncated) = client.list()?;
        if args.json {
            // Access as `import --json` writes it: "rw" / "ro".
            let entries: Vec<ListReport> = entries
                .iter()
                .map(|e| ListReport {
                    key: &e.key,
                    len: e.len,
                    heap: &e.heap,
                    publisher_uid: e.publisher_uid,
                    access: e.access.to_string(),
                    one_shot: e.one_shot,
                    expires_in_secs: e.expires_in_secs,
                })
                .collect();
            print_json(&entries)?;
        } else {
            let rows: Vec<Vec<String>> = entries
                .iter()
                .map(|e| {
                    vec![
                        e.key.clone(),
                        format_size(e.len),
                        e.heap.clone(),
                        e.publisher_uid.to_string(),
                        e.access.to_string(),
                        e.expires_in_secs.map_or_else(|| "-".into(), |s| format!("{s}s")),
                    ]
                })
                .collect();
            print!("{}", crate::output::table(&["KEY", "SIZE", "HEAP", "PUBLISHER", "ACCESS", "EXPIRES"], &rows));
            if truncated {
                println!("(list cut to fit one message)");
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let key = args.key.clone().unwrap_or_default();
    let imported = client.import(&key)?;
    let writable_mapping = args.check_write.then(|| match imported.buffer.map_read_write() {
        Ok(_) => "allowed".to_owned(),
        Err(e) => format!("refused: {e}"),
    });
    let report = ImportReport {
        key,
        access: imported.access.to_string(),
        publisher_uid: imported.publisher_uid,
        buffer: imported.buffer.info(),
        writable_mapping,
    };
    if args.json {
        print_json(&report)?;
    } else {
        let b = &report.buffer;
        println!(
            "imported {} ({}, {} bytes) as a {} from {}, published by uid {}, access {}, inode {}",
            report.key,
            format_size(b.len),
            b.len,
            b.kind,
            b.heap,
            report.publisher_uid,
            report.access,
            b.inode
        );
        if let Some(w) = &report.writable_mapping {
            println!("  writable mapping: {w}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
