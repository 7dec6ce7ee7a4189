//! `examples/c/run.sh`: install to a temporary prefix with
//! `scripts/install.sh`, build the C examples with pkg-config (or explicit
//! flags without it), run them; and again under valgrind when it is installed.
//! Skips, with a visible `SKIP` line, where there is no C compiler.

use std::path::PathBuf;
use std::process::Command;

#[path = "../../dmabroker/tests/common/skip.rs"]
mod skip_rule;

fn have(tool: &str) -> bool {
    Command::new("sh").args(["-c", &format!("command -v {tool} >/dev/null")]).status().is_ok_and(|s| s.success())
}

fn run_sh(args: &[&str]) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    if !have("cc") {
        skip_rule::skip_for_tool("c_examples", "cc", "to build the C examples");
        return;
    }
    if !have("pkg-config") {
        println!("note: pkg-config is not installed: run.sh checks dmabroker.pc by hand and builds with -I/-L");
    }
    // install.sh runs cargo: the one running these tests, when known.
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let cargo_dir = PathBuf::from(&cargo).parent().map(std::path::Path::to_path_buf).unwrap_or_default();
    let path = std::env::join_paths(
        std::iter::once(cargo_dir).chain(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())),
    )
    .unwrap();
    let output = Command::new("bash")
        .arg(root.join("examples/c/run.sh"))
        .args(args)
        .env("PATH", path)
        .output()
        .expect("running examples/c/run.sh");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(output.status.success(), "examples/c/run.sh {args:?} failed ({})", output.status);
    assert!(stdout.contains("C examples: 8 passed, 0 failed"), "unexpected summary");
}

#[test]
fn c_examples_build_and_run() {
    run_sh(&[]);
}

#[test]
fn c_examples_are_clean_under_valgrind() {
    if !have("valgrind") {
        skip_rule::skip_for_tool(
            "c_examples_are_clean_under_valgrind",
            "valgrind",
            "to check the C examples for leaks",
        );
        return;
    }
    run_sh(&["--valgrind"]);
}
