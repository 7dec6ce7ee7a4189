//! With the `bpf-ledger` feature: compiles the dma-buf ledger's BPF iterator
//! (bpf/dmabuf_ledger.bpf.c) with clang into OUT_DIR. Clang is the one tool
//! it needs (any version that targets bpf with BTF: Debian 12's clang 14
//! does); `$CLANG` names another.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=bpf/dmabuf_ledger.bpf.c");
    println!("cargo:rerun-if-env-changed=CLANG");
    if std::env::var_os("CARGO_FEATURE_BPF_LEDGER").is_none() {
        return;
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("dmabuf_ledger.bpf.o");
    let candidates: Vec<String> = match std::env::var("CLANG") {
        Ok(c) => vec![c],
        Err(_) => ["clang", "clang-19", "clang-18", "clang-17", "clang-16", "clang-15", "clang-14"]
            .iter()
            .map(std::string::ToString::to_string)
            .collect(),
    };
    let mut tried = Vec::new();
    for clang in &candidates {
        let result = Command::new(clang)
            .args(["-target", "bpf", "-O2", "-g", "-Wall", "-Werror", "-c", "bpf/dmabuf_ledger.bpf.c", "-o"])
            .arg(&out)
            .status();
        match result {
            Ok(status) if status.success() => return,
            Ok(status) => {
                panic!("{clang} failed to compile bpf/dmabuf_ledger.bpf.c ({status}); see its messages above")
            }
            Err(e) => tried.push(format!("{clang}: {e}")),
        }
    }
    panic!(
        "the `bpf-ledger` feature compiles bpf/dmabuf_ledger.bpf.c with clang, and no clang was found ({}). \
         Fix: install clang (Debian/Ubuntu: `apt-get install clang`), or set CLANG=/path/to/clang, \
         or build without the feature (`--no-default-features` on dmabroker-cli)",
        tried.join("; ")
    );
}
