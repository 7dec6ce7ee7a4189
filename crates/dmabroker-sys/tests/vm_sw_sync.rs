//! sw_sync timelines on the project's kernel (`vm/run.sh --kernel proj`,
//! CONFIG_SW_SYNC): a fence from `SW_SYNC_IOC_CREATE_FENCE` is a real
//! sync_file that stays unsignalled (a bounded poll times out, never hangs)
//! until `SW_SYNC_IOC_INC` moves the timeline past it. Debian's kernels have
//! no sw_sync: there the test prints `SKIP <test>: <reason>`; on the
//! project's kernel (DMABROKER_VM_KERNEL_ID=proj) a skip is a failure.

use dmabroker_sys::sw_sync;
use rustix::event::{poll, PollFd, PollFlags, Timespec};

fn signalled(fence: &std::os::fd::OwnedFd, ms: i64) -> bool {
    let mut fds = [PollFd::new(fence, PollFlags::IN)];
    let t = Timespec { tv_sec: ms / 1000, tv_nsec: (ms % 1000) * 1_000_000 };
    poll(&mut fds, Some(&t)).expect("poll a sync_file") == 1
}

#[test]
fn sw_sync_fence_signals_when_the_timeline_reaches_it() {
    let test = "sw_sync_fence_signals_when_the_timeline_reaches_it";
    let timeline = match sw_sync::open_timeline() {
        Ok(t) => t,
        Err(e) => {
            let reason = format!(
                "cannot open {}: {e} (CONFIG_SW_SYNC and debugfs: vm/run.sh --kernel proj)",
                sw_sync::SW_SYNC_PATH
            );
            assert!(std::env::var("DMABROKER_VM_KERNEL_ID").as_deref() != Ok("proj"), "{test}: {reason}");
            println!("SKIP {test}: {reason}");
            return;
        }
    };
    let first = sw_sync::create_fence(&timeline, 1, "dmabroker-first").expect("create fence 1");
    let second = sw_sync::create_fence(&timeline, 2, "dmabroker-second").expect("create fence 2");
    assert!(!signalled(&first, 50), "fence 1 signalled before the timeline moved");
    sw_sync::inc(&timeline, 1).expect("SW_SYNC_IOC_INC");
    assert!(signalled(&first, 1000), "fence 1 not signalled after the timeline reached 1");
    assert!(!signalled(&second, 50), "fence 2 signalled at timeline 1");
    // A signaller in another thread, later: the waiter wakes.
    let t = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(100));
        sw_sync::inc(&timeline, 1).expect("SW_SYNC_IOC_INC");
    });
    assert!(signalled(&second, 5000), "fence 2 not signalled after the timeline reached 2");
    t.join().unwrap();
    // The kernel shows the fences by name.
    let info = std::fs::read_to_string("/sys/kernel/debug/sync/info").unwrap_or_default();
    println!("sync info: {} bytes", info.len());
}
