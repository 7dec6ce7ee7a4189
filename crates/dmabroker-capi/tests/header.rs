//! The checked-in header `include/dmabroker.h` is what cbindgen makes of
//! the current source.

use std::path::PathBuf;

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn header_path() -> PathBuf {
    crate_dir().join("include/dmabroker.h")
}

/// The header cbindgen generates from the source, in memory.
fn generate() -> String {
    let dir = crate_dir();
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("reading cbindgen.toml");
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(dir.join("src/lib.rs"))
        .generate()
        .expect("cbindgen could not parse the capi crate");
    let mut out = Vec::new();
    bindings.write(&mut out);
    String::from_utf8(out).expect("cbindgen wrote UTF-8")
}

#[test]
fn header_is_current() {
    let fresh = generate();
    let checked_in = std::fs::read_to_string(header_path()).unwrap_or_default();
    if fresh != checked_in {
        let first_difference = fresh
            .lines()
            .zip(checked_in.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| fresh.lines().count().min(checked_in.lines().count()));
        panic!(
            "{} is stale (first difference at line {}): the C API changed without the header.\n\
             Regenerate it with:\n    cargo test -p dmabroker-capi --test header -- --ignored regenerate_header\n\
             and commit include/dmabroker.h with the change.",
            header_path().display(),
            first_difference + 1
        );
    }
}

/// Rewrites `include/dmabroker.h` (ignored: run it on purpose).
#[test]
#[ignore = "rewrites include/dmabroker.h; run with --ignored regenerate_header"]
fn regenerate_header() {
    let fresh = generate();
    std::fs::write(header_path(), fresh).expect("writing include/dmabroker.h");
    eprintln!("wrote {}", header_path().display());
}
