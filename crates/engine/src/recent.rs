//! The newest replication log entries, kept in memory for the replication streams.
//!
//! Every edge streams central's log, and edges that keep up all ask for the entries just
//! committed. Reading those back from the store once per edge (a range scan and a decode
//! each time) took about 5% of central's CPU under write load with three edges. The commit
//! pipeline therefore also hands every entry it appends to a [`RecentLog`], and a stream reads
//! the store only for entries older than what this holds. Each entry is held with the writer
//! id its write came with, so that a stream can leave an edge's own writes out (see
//! [`driftkv_core::upstream::Subscription::writer`]).

use std::collections::VecDeque;
use std::sync::Mutex;

use crate::Logged;

/// Bytes of changes central holds: at 100-byte values, some 180,000 entries, tens of seconds
/// of the heaviest write load it takes.
pub(crate) const RECENT_LOG_BYTES: usize = 32 << 20;

/// A run of consecutive log entries, the newest ones appended, bounded in bytes.
pub(crate) struct RecentLog {
    held: Mutex<Held>,
    max_bytes: usize,
}

#[derive(Default)]
struct Held {
    entries: VecDeque<Logged>,
    bytes: usize,
}

impl Held {
    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }
}

impl RecentLog {
    /// Holds at most `max_bytes` of changes (as [`driftkv_core::Change::size`] counts them).
    pub(crate) fn new(max_bytes: usize) -> Self {
        RecentLog {
            held: Mutex::new(Held::default()),
            max_bytes,
        }
    }

    /// Adds `entries`, oldest first, dropping the oldest held beyond the bound. Their values
    /// must be in allocations of their own (as [`driftkv_store::Store::append_writers`] leaves
    /// them), not slices of a larger buffer: holding one would hold that whole buffer, and the
    /// bound in bytes would bound the values, not the memory they keep. An entry that
    /// does not follow on from the newest held (there is a gap) starts the run over, and one
    /// larger than the whole bound is not held, so what is held is always consecutive.
    pub(crate) fn push(&self, entries: Vec<Logged>) {
        let mut held = self.held.lock().expect("recent log lock");
        for logged in entries {
            let follows = held
                .entries
                .back()
                .is_none_or(|newest| logged.entry.sequence == newest.entry.sequence + 1);
            let size = logged.entry.change.size();
            if !follows || size > self.max_bytes {
                held.clear();
            }
            if size > self.max_bytes {
                continue;
            }
            held.bytes += size;
            held.entries.push_back(logged);
            while held.bytes > self.max_bytes {
                let Some(oldest) = held.entries.pop_front() else {
                    break;
                };
                held.bytes -= oldest.entry.change.size();
            }
        }
    }

    /// Up to `max` consecutive entries from sequence `from` on, if the entry `from` is held.
    pub(crate) fn read(&self, from: u64, max: usize) -> Option<Vec<Logged>> {
        let held = self.held.lock().expect("recent log lock");
        let oldest = held.entries.front()?.entry.sequence;
        let skip = usize::try_from(from.checked_sub(oldest)?).ok()?;
        if skip >= held.entries.len() {
            return None;
        }
        Some(held.entries.range(skip..).take(max).cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use driftkv_core::{Change, LogEntry, NamespaceId};

    use super::*;

    fn entry(sequence: u64) -> Logged {
        Logged {
            entry: LogEntry {
                sequence,
                change: Change::NamespaceDeleted {
                    id: NamespaceId([1; 16]),
                    version: driftkv_core::Version::default(),
                },
            },
            writer: None,
        }
    }

    fn sequences(entries: Option<Vec<Logged>>) -> Option<Vec<u64>> {
        entries.map(|entries| entries.iter().map(|e| e.entry.sequence).collect())
    }

    #[test]
    fn reads_what_it_holds_and_nothing_else() {
        let recent = RecentLog::new(1 << 20);
        assert_eq!(sequences(recent.read(1, 10)), None);
        recent.push((5..=9).map(entry).collect());
        assert_eq!(sequences(recent.read(5, 10)), Some(vec![5, 6, 7, 8, 9]));
        assert_eq!(sequences(recent.read(7, 2)), Some(vec![7, 8]));
        assert_eq!(sequences(recent.read(4, 10)), None, "older than held");
        assert_eq!(sequences(recent.read(10, 10)), None, "newer than held");
    }

    #[test]
    fn a_gap_starts_the_run_over() {
        let recent = RecentLog::new(1 << 20);
        recent.push((1..=3).map(entry).collect());
        recent.push(vec![entry(5), entry(6)]);
        assert_eq!(sequences(recent.read(1, 10)), None);
        assert_eq!(sequences(recent.read(5, 10)), Some(vec![5, 6]));
    }

    #[test]
    fn the_oldest_go_beyond_the_bound() {
        let size = entry(1).entry.change.size();
        let recent = RecentLog::new(3 * size);
        recent.push((1..=5).map(entry).collect());
        assert_eq!(sequences(recent.read(1, 10)), None);
        assert_eq!(sequences(recent.read(3, 10)), Some(vec![3, 4, 5]));
    }

    #[test]
    fn an_entry_larger_than_the_bound_is_not_held() {
        let size = entry(1).entry.change.size();
        let recent = RecentLog::new(size);
        recent.push((1..=2).map(entry).collect());
        assert_eq!(sequences(recent.read(2, 10)), Some(vec![2]));
        let mut big = entry(3);
        big.entry = LogEntry {
            sequence: 3,
            change: Change::Key {
                namespace: NamespaceId([1; 16]),
                key: "k".repeat(size),
                record: driftkv_core::Record {
                    version: driftkv_core::Version {
                        timestamp: 1,
                        origin: 1,
                    },
                    live: None,
                },
            },
        };
        recent.push(vec![big, entry(4)]);
        assert_eq!(sequences(recent.read(2, 10)), None);
        assert_eq!(sequences(recent.read(3, 10)), None);
        assert_eq!(sequences(recent.read(4, 10)), Some(vec![4]));
    }
}
