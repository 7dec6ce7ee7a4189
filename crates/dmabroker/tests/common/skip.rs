//! The one way a test of this workspace skips: visibly, and never inside
//! the test VM for want of a kernel feature (there every feature the suites
//! need is present, so such a skip is a failure). Included by path from the
//! tests and unit tests of every crate, so there is one copy of the rule.
#![allow(dead_code)]

/// True inside the test VM (`vm/run.sh` sets DMABROKER_VM=1).
pub fn in_vm() -> bool {
    std::env::var_os("DMABROKER_VM").is_some_and(|v| v == "1")
}

/// Print `SKIP <test>: <reason>` for a test the machine cannot run (a
/// kernel feature, a privilege): inside the VM, fail instead.
pub fn skip(test: &str, reason: &str) {
    assert!(!in_vm(), "{test}: {reason} (inside the test VM this must not happen)");
    println!("SKIP {test}: {reason}");
}

/// Print `SKIP <test>: needs <tool> (<why>)` for a test that needs a
/// user-space program (a C compiler, valgrind) rather than a kernel
/// feature. The VM's initramfs holds only the static test binaries and
/// `dmabroker`, so such a test runs on the host only, and says so there too;
/// `.ci/run` installs every such tool on the host, where
/// `DMABROKER_REQUIRE_TOOLS=1` (set by scripts/test-all.sh) turns the skip
/// into a failure.
pub fn skip_for_tool(test: &str, tool: &str, why: &str) {
    let required = std::env::var_os("DMABROKER_REQUIRE_TOOLS").is_some_and(|v| v == "1");
    assert!(!required || in_vm(), "{test}: needs {tool} ({why}), and DMABROKER_REQUIRE_TOOLS=1");
    let place = if in_vm() { "host-only test: the VM image has no user-space tools" } else { "not installed" };
    println!("SKIP {test}: needs {tool} ({why}; {place})");
}
