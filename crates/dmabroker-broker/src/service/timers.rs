//! Timers: the sweep that ends charges (on the loop or in the background),
//! expiries, notification retries and state saves.

use super::{ScanInFlight, Service, NOTIFY_RETRY, SCAN_POLL, STATE_SAVE_DELAY};
use crate::holders;
use crate::registry::Entry;
use std::collections::HashSet;
use std::time::{Duration, Instant, SystemTime};

impl Service {
    /// Release every buffer (of `uid`, or of everyone) that is neither
    /// published nor pinned and that no other process holds. Returns how
    /// many were released.
    pub fn sweep(&mut self, uid: Option<u32>) -> usize {
        self.sweep_matching(|e| uid.is_none_or(|u| e.owner_uid == u), uid.is_none(), true).0
    }

    /// [`Self::sweep`] of the buffers `which` selects (`all`: it selects
    /// every buffer, which satisfies a requested sweep; `scan`: scan `/proc`
    /// here for those that need it, else leave them). Returns how many were
    /// released, and how many were left for want of a scan.
    pub(super) fn sweep_matching(&mut self, which: impl Fn(&Entry) -> bool, all: bool, scan: bool) -> (usize, usize) {
        let start = Instant::now();
        let candidates: Vec<u64> = self
            .registry
            .entries()
            .filter(|(_, e)| e.publications == 0 && e.pins == 0 && which(e))
            .map(|(id, _)| id)
            .collect();
        let mut release = Vec::new();
        let mut wanted = HashSet::new();
        let mut scanned = Vec::new();
        for &id in &candidates {
            let e = self.registry.get(id).expect("candidate exists");
            match holders::without_scan(e) {
                Some(true) => {}
                Some(false) => release.push(id),
                None => {
                    wanted.insert(e.file);
                    scanned.push(id);
                }
            }
        }
        let unscanned = if scan { 0 } else { scanned.len() };
        if !wanted.is_empty() && scan {
            let scan = holders::scan(&wanted, self.scan_own_process);
            for &id in &scanned {
                let e = self.registry.get(id).expect("candidate exists");
                if !scan.held(&e.file) && !holders::maybe_hidden(e, &scan) {
                    release.push(id);
                }
            }
        }
        for &id in &release {
            if let Some(e) = self.registry.remove(id) {
                tracing::debug!(id, uid = e.owner_uid, len = e.len, "released: no holder left");
                release_off_loop(e);
            }
        }
        if scan {
            self.last_sweep_end = Instant::now();
            self.last_sweep_cost = self.last_sweep_end - start;
            self.len_after_sweep = self.registry.len();
            if all {
                self.sweep_requested = false;
            }
        }
        (release.len(), unscanned)
    }

    /// When the next timer sweep may start (a requested one: soon, within
    /// the duty factor).
    pub(super) fn next_scan_due(&self) -> Instant {
        let gap = self.last_sweep_cost * self.timing.duty_factor;
        match self.scan_in_flight {
            // One at a time: the next starts after this one ends, then soon.
            Some(ref f) => Instant::now().max(f.started + gap.max(Duration::from_millis(20))),
            None => self.last_sweep_end + gap.max(Duration::from_millis(20)),
        }
    }

    /// The timer's sweep: what needs no scan (dma-bufs, memfds with open
    /// counts) is decided here; the `/proc` scan for the rest runs on a
    /// thread, at most one at a time, and [`Self::finish_background_scan`]
    /// applies it. (Quota-pressure sweeps of the server's requests never
    /// scan on the loop: they wait for this one, see `deferred.rs`;
    /// [`Self::sweep`] still scans inline.)
    pub(super) fn sweep_in_background(&mut self) {
        if self.scan_in_flight.is_some() {
            return;
        }
        self.scans_started += 1;
        let start = Instant::now();
        let mut release = Vec::new();
        let mut wanted = HashSet::new();
        let mut scanned = Vec::new();
        for (id, e) in self.registry.entries().filter(|(_, e)| e.publications == 0 && e.pins == 0) {
            match holders::without_scan(e) {
                Some(true) => {}
                Some(false) => release.push(id),
                None => {
                    wanted.insert(e.file);
                    scanned.push((id, e.handouts));
                }
            }
        }
        for id in release {
            if let Some(e) = self.registry.remove(id) {
                tracing::debug!(id, uid = e.owner_uid, len = e.len, "released: no holder left");
                release_off_loop(e);
            }
        }
        if !wanted.is_empty() {
            let (tx, rx) = std::sync::mpsc::channel();
            let include_self = self.scan_own_process;
            let spawned = std::thread::Builder::new().name("dmabroker-sweep".into()).spawn(move || {
                let _ = tx.send(holders::scan(&wanted, include_self));
            });
            match spawned {
                Ok(_) => self.scan_in_flight = Some(ScanInFlight { result: rx, candidates: scanned, started: start }),
                Err(e) => tracing::warn!("cannot start a sweep thread ({e}); charges are checked at the next sweep"),
            }
        }
        if self.scan_in_flight.is_none() {
            self.scans_finished = self.scans_started;
        }
        self.last_sweep_end = Instant::now();
        self.last_sweep_cost = self.last_sweep_end - start;
        self.len_after_sweep = self.registry.len();
        self.sweep_requested = false;
    }

    /// Apply a finished background scan (nothing while it runs).
    pub(super) fn finish_background_scan(&mut self) {
        let Some(flight) = &self.scan_in_flight else { return };
        let scan = match flight.result.try_recv() {
            Ok(scan) => scan,
            Err(std::sync::mpsc::TryRecvError::Empty) => return,
            Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                self.scan_in_flight = None;
                self.scans_finished = self.scans_started;
                return;
            }
        };
        self.scans_finished = self.scans_started;
        let flight = self.scan_in_flight.take().expect("checked above");
        for (id, handouts) in flight.candidates {
            let Some(e) = self.registry.get(id) else { continue };
            // Published, pinned or handed out meanwhile: the scan may have
            // passed the new holder already.
            if e.publications != 0 || e.pins != 0 || e.handouts != handouts {
                continue;
            }
            if !scan.held(&e.file) && !holders::maybe_hidden(e, &scan) {
                if let Some(e) = self.registry.remove(id) {
                    tracing::debug!(id, uid = e.owner_uid, len = e.len, "released: no holder left");
                    release_off_loop(e);
                }
            }
        }
        // The duty factor counts the scan's time, though the loop did not wait.
        self.last_sweep_end = Instant::now();
        self.last_sweep_cost = self.last_sweep_end - flight.started;
        self.len_after_sweep = self.registry.len();
    }

    /// When the next timer is due.
    pub fn next_deadline(&self) -> Instant {
        let gap = self.last_sweep_cost * self.timing.duty_factor;
        let sweep = if self.sweep_requested {
            self.last_sweep_end + gap.max(Duration::from_millis(20))
        } else {
            self.last_sweep_end + gap.max(self.timing.interval)
        };
        let mut next = sweep.min(self.next_expiry_check);
        if let Some(t) = self.charging.next_deadline() {
            next = next.min(t);
        }
        if self.scan_in_flight.is_some() {
            next = next.min(Instant::now() + SCAN_POLL);
        }
        if let Some(t) = self.next_park_deadline() {
            next = next.min(t);
        }
        if self.state_dirty {
            next = next.min(self.state_dirty_since.unwrap_or_else(Instant::now) + STATE_SAVE_DELAY);
        }
        if self.notifier.as_ref().is_some_and(|n| n.pending() > 0) {
            // Notifications the manager could not take yet: retried on the
            // socket's EPOLLOUT, and by this timer in case that never comes.
            next = next.min(Instant::now() + NOTIFY_RETRY);
        }
        next
    }

    /// Run what is due: expiries, sweeps, saving state for the fd store.
    pub fn tick(&mut self) {
        self.finish_background_scan();
        let now = Instant::now();
        self.charging.tick();
        if let Some(n) = &mut self.notifier {
            if n.pending() > 0 {
                n.flush();
            }
            // A queued state update was dropped for room: save it again.
            if n.take_state_lost() {
                self.state_dirty = true;
            }
        }
        if now >= self.next_expiry_check {
            let mut withdrawn = false;
            for key in self.registry.expired(SystemTime::now()) {
                withdrawn |= self.withdraw_unsaved(&key);
            }
            if withdrawn {
                // One save for every expiry of this check.
                self.save_now();
            }
            self.next_expiry_check = now + Duration::from_secs(1);
            self.pools.sweep();
        }
        let gap = self.last_sweep_cost * self.timing.duty_factor;
        let due = if self.sweep_requested { gap.max(Duration::from_millis(20)) } else { gap.max(self.timing.interval) };
        // Under fd pressure, sweep as often as half the time allows.
        let fd_pressure = self.registry.len() > self.fd_pressure
            && self.registry.len() > self.len_after_sweep
            && now >= self.last_sweep_end + self.last_sweep_cost.max(Duration::from_millis(5));
        if fd_pressure || now >= self.last_sweep_end + due {
            let has_candidates = self.registry.entries().any(|(_, e)| e.publications == 0 && e.pins == 0);
            if has_candidates {
                self.sweep_in_background();
            } else {
                self.last_sweep_end = now;
                self.sweep_requested = false;
                self.scans_started += 1;
                self.scans_finished = self.scans_started;
            }
        }
        if self.state_dirty {
            let since = *self.state_dirty_since.get_or_insert(now);
            if now >= since + STATE_SAVE_DELAY {
                self.state_dirty_since = None;
                crate::persist::save(self);
            }
        }
    }
}

/// Close a released buffer's fd on a closer thread: the broker's is often
/// the last reference, and the last close frees the pages (a 256 MiB memfd
/// a client wrote: tens of milliseconds the loop would not answer).
fn release_off_loop(e: Entry) {
    if let Ok(fd) = e.buffer.into_fd() {
        dmabroker::closer::close_later(fd);
    }
}
