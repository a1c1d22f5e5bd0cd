//! What a store is doing right now, for a test harness that records in which state a fault
//! found it (a crash mid-flush is a different situation from a crash while idle).
//!
//! `Options::activity` hands the store an `Activity`; the store counts each piece of work in
//! it while the work runs (recovery in `open`, a manifest write, a memtable flush, a
//! compaction, a log sync), and whoever holds a clone reads `label()`. Counting is a relaxed
//! atomic add and subtract: it reads no clock, draws no randomness and does no I/O, so a store
//! with an `Activity` runs exactly as one without. A guard counts down when dropped, also when
//! the work's future is dropped midway (a crash, a cancelled task).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

/// A piece of the store's own work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Work {
    /// Writing a new manifest (temporary file, sync, rename, directory sync).
    Manifest,
    /// Writing a memtable into a level-0 table.
    Flush,
    /// Merging tables into the next level.
    Compaction,
    /// Syncing the write-ahead log.
    LogSync,
    /// Opening the store: reading the manifest and tables, replaying the logs.
    Recovery,
}

impl Work {
    /// Every kind of work, in the order `Activity::label` ranks them (first wins).
    pub const ALL: [Work; 5] =
        [Work::Manifest, Work::Flush, Work::Compaction, Work::LogSync, Work::Recovery];

    /// A short name: `manifest`, `flush`, `compaction`, `log-sync`, `recovery`.
    pub fn label(self) -> &'static str {
        match self {
            Work::Manifest => "manifest",
            Work::Flush => "flush",
            Work::Compaction => "compaction",
            Work::LogSync => "log-sync",
            Work::Recovery => "recovery",
        }
    }
}

/// Counts of the store's work running now; clones share the counts.
#[derive(Clone, Debug, Default)]
pub struct Activity(Arc<[AtomicU32; Work::ALL.len()]>);

impl Activity {
    /// Counts with nothing running.
    pub fn new() -> Activity {
        Activity::default()
    }

    /// The first kind of work of `Work::ALL` that runs now, if any.
    pub fn label(&self) -> Option<&'static str> {
        let running = Work::ALL.iter().find(|work| self.running(**work) > 0);
        running.map(|work| work.label())
    }

    /// How many pieces of `work` run now.
    pub fn running(&self, work: Work) -> u32 {
        self.0[work as usize].load(Ordering::Relaxed)
    }

    /// Counts `work` as running until the guard drops.
    pub fn begin(&self, work: Work) -> WorkGuard {
        let before = self.0[work as usize].fetch_add(1, Ordering::Relaxed);
        assert!(before < u32::MAX, "counts of {work:?} overflow");
        WorkGuard { activity: self.clone(), work }
    }
}

/// One piece of work running; it ends when the guard drops.
#[derive(Debug)]
#[must_use = "the work ends when the guard drops"]
pub struct WorkGuard {
    activity: Activity,
    work: Work,
}

impl Drop for WorkGuard {
    fn drop(&mut self) {
        let before = self.activity.0[self.work as usize].fetch_sub(1, Ordering::Relaxed);
        assert!(before > 0, "{:?} ended more often than it began", self.work);
    }
}

/// Counts `work` in `activity`, if the store has one.
pub(crate) fn begin(activity: Option<&Activity>, work: Work) -> Option<WorkGuard> {
    activity.map(|activity| activity.begin(work))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_running_work_is_the_label() {
        let activity = Activity::new();
        assert_eq!(activity.label(), None);
        let sync = activity.begin(Work::LogSync);
        let clone = activity.clone();
        assert_eq!(clone.label(), Some("log-sync"));
        let flush = activity.begin(Work::Flush);
        let second_flush = activity.begin(Work::Flush);
        assert_eq!(activity.label(), Some("flush"));
        assert_eq!(activity.running(Work::Flush), 2);
        drop((flush, second_flush));
        assert_eq!(activity.label(), Some("log-sync"));
        drop(sync);
        assert_eq!(clone.label(), None);
    }
}
