//! Policy by cgroup (issue 16, item 2): `[[cgroup]]` rules matched against
//! the cgroup a client is in when it connects, on this machine's cgroup v2
//! hierarchy. Each client is a `dmabroker` process that a shell starts and
//! holds until the test has written its pid into a test-owned cgroup's
//! `cgroup.procs`; the cgroups are removed at the end. Runs on the host
//! (as root, on its cgroup v2 hierarchy) and in the VM on every kernel.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

mod common;

use common::broker::{bin, text, Daemon};

/// Where cgroup2 is mounted (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified`
/// on a hybrid host); in the test VM, whose init mounts none, it is mounted
/// at `/sys/fs/cgroup` first.
fn cgroup2_mount() -> Option<PathBuf> {
    let found = mounted_cgroup2();
    if found.is_none() && common::in_vm() {
        let st = Command::new("mount").args(["-t", "cgroup2", "none", "/sys/fs/cgroup"]).status().ok()?;
        assert!(st.success(), "mount -t cgroup2 none /sys/fs/cgroup: {st}");
        return mounted_cgroup2();
    }
    found
}

fn mounted_cgroup2() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        left.split_whitespace().nth(4).map(PathBuf::from)
    })
}

/// Test-owned cgroups, removed (deepest first) when dropped, and the
/// policy file, removed too (also when an assertion failed).
struct Cgroups {
    dirs: Vec<PathBuf>,
    policy: Option<PathBuf>,
}

impl Cgroups {
    fn make(&mut self, dir: PathBuf) -> PathBuf {
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        self.dirs.push(dir.clone());
        dir
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        if let Some(p) = &self.policy {
            let _ = std::fs::remove_file(p);
        }
        for d in self.dirs.iter().rev() {
            // A cgroup is removable once its processes have exited, which
            // the kernel notices a moment after wait() returns.
            for _ in 0..50 {
                if std::fs::remove_dir(d).is_ok() || !d.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Run `dmabroker ARGS` against `d` as a process placed in `cgroup` before it starts.
fn run_in(d: &Daemon, cgroup: &Path, args: &[&str]) -> Output {
    let mut child = Command::new("sh")
        .args(["-c", "read _ && exec \"$0\" \"$@\"", bin()])
        .args(args)
        .env("DMABROKER_SOCKET", &d.socket)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::fs::write(cgroup.join("cgroup.procs"), child.id().to_string())
        .unwrap_or_else(|e| panic!("move {} into {}: {e}", child.id(), cgroup.display()));
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    child.wait_with_output().unwrap()
}

fn json(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", text(o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(o)))
}

#[test]
fn cgroup_rules_narrow_quotas_and_heaps_per_cgroup() {
    let test = "cgroup_rules_narrow_quotas_and_heaps_per_cgroup";
    if !rustix::process::geteuid().is_root() {
        common::skip(test, "needs root to create cgroups and move processes between them");
        return;
    }
    let Some(mount) = cgroup2_mount() else {
        common::skip(test, "no cgroup2 mount");
        return;
    };
    let top = format!("dmabroker-cgpolicy-{}", std::process::id());
    let mut cgroups = Cgroups { dirs: Vec::new(), policy: None };
    let base = cgroups.make(mount.join(&top));
    let apps = cgroups.make(base.join("apps.slice"));
    let app_a = cgroups.make(apps.join("app-a.scope"));
    let app_b = cgroups.make(apps.join("app-b.scope"));
    let other = cgroups.make(base.join("other.scope"));
    let greedy = cgroups.make(base.join("greedy.scope"));

    // uid 0 (the broker's and the clients'): memfd only, 8 MiB. Every
    // app-*.scope below apps.slice: 1 MiB each, and no publishing for b's
    // sibling rule below. greedy.scope: a rule that tries to grant more.
    let policy = format!(
        "[[user]]\nuid = 0\nheaps = [\"memfd\"]\nmax_bytes = \"8MiB\"\nmax_buffers = 64\npublish = true\n\n\
         [[cgroup]]\npath = \"{top}/apps.slice/app-*.scope\"\nmax_bytes = \"1MiB\"\nmax_buffers = 8\n\n\
         [[cgroup]]\npath = \"{top}/greedy.scope\"\nheaps = [\"*\"]\nmax_bytes = \"64MiB\"\nmax_buffers = 1000\n"
    );
    let policy_path = std::env::temp_dir().join(format!("{top}.toml"));
    std::fs::write(&policy_path, policy).unwrap();
    cgroups.policy = Some(policy_path.clone());
    let d =
        Daemon::start("dmabroker-cli", "cgroup", &["--policy", policy_path.to_str().unwrap()], Duration::from_secs(20));
    let cg = |p: &Path| format!("/{}", p.strip_prefix(&mount).unwrap().display());

    // A client in app-a.scope gets that cgroup's 1 MiB and is refused beyond it, naming it.
    let o = run_in(&d, &app_a, &["alloc", "--heap", "memfd", "--size", "768KiB", "--publish", "a1", "--json"]);
    assert_eq!(json(&o)["published"], "a1");
    let o = run_in(&d, &app_a, &["alloc", "--heap", "memfd", "--size", "512KiB", "--publish", "a2"]);
    let m = text(&o);
    eprintln!("{test}: refused in app-a.scope: {m}");
    assert!(!o.status.success(), "{m}");
    assert!(m.contains(&format!("cgroup {}", cg(&app_a))), "names the cgroup: {m}");
    assert!(m.contains(&format!("[[cgroup]] `{top}/apps.slice/app-*.scope` (policy line 9)")), "names the rule: {m}");
    assert!(m.contains("1 MiB") && m.contains("768 KiB"), "names the limit and the use: {m}");

    // stats in app-a.scope: the cgroup, its use and the rule.
    let v = json(&run_in(&d, &app_a, &["stats", "--json"]));
    assert_eq!(v["cgroup"]["path"], cg(&app_a), "{v}");
    assert_eq!(v["cgroup"]["used_bytes"], 768 << 10, "{v}");
    assert_eq!(v["cgroup"]["rules"][0]["line"], 9, "{v}");
    assert_eq!(v["cgroup"]["rules"][0]["max_bytes"], 1 << 20, "{v}");
    let o = run_in(&d, &app_a, &["stats"]);
    eprintln!("{test}: stats in app-a.scope:\n{}", text(&o));
    assert!(text(&o).contains(&format!("cgroup {}: 768 KiB in 1 buffer(s)", cg(&app_a))), "{}", text(&o));

    // app-b.scope matches the same glob but is its own cgroup: its own 1 MiB.
    let o = run_in(&d, &app_b, &["alloc", "--heap", "memfd", "--size", "768KiB", "--publish", "b1"]);
    assert!(o.status.success(), "a sibling cgroup has its own quota: {}", text(&o));
    // A cgroup no rule matches: the uid's 8 MiB alone.
    let o = run_in(&d, &other, &["alloc", "--heap", "memfd", "--size", "4MiB", "--publish", "o1"]);
    assert!(o.status.success(), "a client in an unmatched cgroup is not narrowed: {}", text(&o));

    // greedy.scope's rule says every heap and 64 MiB: it cannot grant more than the uid has
    // (hugetlb: refused by the policy before any huge page is needed).
    let o = run_in(&d, &greedy, &["alloc", "--heap", "hugetlb", "--size", "64KiB", "--publish", "g0"]);
    assert!(!o.status.success() && text(&o).contains("may not allocate from heap"), "{}", text(&o));
    let o = run_in(&d, &greedy, &["alloc", "--heap", "memfd", "--size", "4MiB", "--publish", "g1"]);
    let m = text(&o);
    eprintln!("{test}: refused in greedy.scope: {m}");
    assert!(!o.status.success() && m.contains("uid 0 holds") && m.contains("quota of 8 MiB"), "{m}");
    let v = json(&run_in(&d, &greedy, &["stats", "--json"]));
    assert_eq!(v["max_bytes"], 8 << 20, "the uid's quota stands: {v}");
    assert_eq!(v["cgroup"]["rules"][0]["max_bytes"], 64 << 20, "{v}");

    drop(d);
}

#[test]
fn a_subtree_rule_sums_its_cgroups_and_rules_deny_heaps_and_publishing() {
    let test = "a_subtree_rule_sums_its_cgroups_and_rules_deny_heaps_and_publishing";
    if !rustix::process::geteuid().is_root() {
        common::skip(test, "needs root to create cgroups and move processes between them");
        return;
    }
    let Some(mount) = cgroup2_mount() else {
        common::skip(test, "no cgroup2 mount");
        return;
    };
    let top = format!("dmabroker-cgpolicy-tree-{}", std::process::id());
    let mut cgroups = Cgroups { dirs: Vec::new(), policy: None };
    let base = cgroups.make(mount.join(&top));
    let sandbox = cgroups.make(base.join("sandbox.slice"));
    let one = cgroups.make(sandbox.join("one.scope"));
    let two = cgroups.make(sandbox.join("two.scope"));
    let quiet = cgroups.make(sandbox.join("quiet.scope"));
    // The whole sandbox.slice subtree: 1 MiB together, memfd only; quiet.scope may not publish.
    let policy = format!(
        "[[user]]\nuid = 0\nheaps = [\"*\"]\nmax_bytes = \"64MiB\"\nmax_buffers = 64\npublish = true\n\
         [[cgroup]]\npath = \"/{top}/sandbox.slice/**\"\nheaps = [\"memfd\"]\nmax_bytes = \"1MiB\"\n\
         [[cgroup]]\npath = \"/{top}/sandbox.slice/quiet.scope\"\npublish = false\n"
    );
    let policy_path = std::env::temp_dir().join(format!("{top}.toml"));
    std::fs::write(&policy_path, policy).unwrap();
    cgroups.policy = Some(policy_path.clone());
    let d =
        Daemon::start("dmabroker-cli", "cgtree", &["--policy", policy_path.to_str().unwrap()], Duration::from_secs(20));
    let slice = format!("/{top}/sandbox.slice");

    let o = run_in(&d, &one, &["alloc", "--heap", "memfd", "--size", "768KiB", "--publish", "one"]);
    assert!(o.status.success(), "{}", text(&o));
    // two.scope is another cgroup, but the subtree's 1 MiB is shared.
    let o = run_in(&d, &two, &["alloc", "--heap", "memfd", "--size", "512KiB", "--publish", "two"]);
    let m = text(&o);
    eprintln!("{test}: refused in two.scope: {m}");
    assert!(!o.status.success(), "{m}");
    assert!(m.contains(&format!("cgroup {slice} (the client is in {slice}/two.scope, below it)")), "{m}");
    assert!(m.contains("(policy line 8)") && m.contains("1 MiB"), "{m}");
    let v = json(&run_in(&d, &two, &["stats", "--json"]));
    assert_eq!(
        (&v["cgroup"]["rules"][0]["unit"], &v["cgroup"]["rules"][0]["used_bytes"]),
        (&slice.clone().into(), &(768 << 10).into()),
        "{v}"
    );
    assert_eq!(v["cgroup"]["used_bytes"], 0, "nothing is charged to two.scope itself: {v}");

    let o = run_in(&d, &one, &["alloc", "--heap", "hugetlb", "--size", "4KiB", "--broker"]);
    let m = text(&o);
    assert!(
        !o.status.success() && m.contains("heap `hugetlb` is not allowed in cgroup") && m.contains("line 8"),
        "{m}"
    );
    let o = run_in(&d, &quiet, &["alloc", "--heap", "memfd", "--size", "4KiB", "--publish", "q"]);
    let m = text(&o);
    assert!(!o.status.success() && m.contains("publishing is denied in cgroup") && m.contains("line 12"), "{m}");

    drop(d);
}
