//! The checker of the consistency model driftkv promises (Workers KV's):
//!
//! 1. **No phantom reads**: a read returns a value some write of that key wrote (or nothing).
//! 2. **Bounded staleness**: a read never returns a value that was superseded by a write
//!    completed more than the bound (cache TTL plus replication lag) before the read began.
//! 3. **Read your writes**: a read at the edge that made a write, begun after the write
//!    completed, never returns a value that write superseded.
//! 4. **Convergence**: after the workload, every edge holds the same value for each key.
//!
//! "Superseded" is real-time order: write B supersedes write A (same key) when B began after
//! A completed. Concurrent writes supersede neither; last-write-wins may keep either, but every
//! edge must keep the same. A failed write may have taken effect, so reading its value is no
//! phantom, but it supersedes nothing.

use std::collections::HashMap;
use std::fmt;

use crate::history::{History, Kind, Op};

/// Which promise a violation breaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rule {
    /// A read returned a value no write wrote.
    PhantomRead,
    /// A read returned a value superseded longer ago than the bound.
    StaleRead,
    /// A read at the writing edge missed that edge's completed write.
    ReadYourWrites,
    /// Edges ended with different values for a key.
    Divergence,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Rule::PhantomRead => "phantom read",
            Rule::StaleRead => "stale read",
            Rule::ReadYourWrites => "read-your-writes",
            Rule::Divergence => "divergence",
        })
    }
}

/// One broken promise, with the operations involved (indices into the history's operations).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The promise.
    pub rule: Rule,
    /// What happened.
    pub message: String,
    /// The operations involved, the offending read first.
    pub ops: Vec<usize>,
}

/// An operation, described for a report.
pub struct Described<'a>(pub &'a Op);

impl fmt::Display for Described<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = self.0;
        let kind = match op.kind {
            Kind::Write if op.value.is_none() => "delete",
            Kind::Write => "write",
            Kind::Read => "read",
            Kind::Final => "final read",
        };
        let value = op
            .value
            .as_deref()
            .map_or("(none)".to_owned(), |v| format!("{v:?}"));
        write!(
            f,
            "{kind} {:?} = {value} at edge {} [{}..{} ms]{}",
            op.key,
            op.edge,
            op.invoke_ms,
            op.complete_ms,
            if op.ok { "" } else { " (failed)" }
        )
    }
}

/// What a read observed: the write it saw, or the state before any write.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
    Initial,
    Write(usize),
}

/// Checks `history` against the four rules; an empty result means it satisfies them.
pub fn check(history: &History) -> Vec<Violation> {
    let ops = &history.ops;
    let bound = history.meta.bound_ms;
    let mut writes: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, op) in ops.iter().enumerate() {
        if op.kind == Kind::Write {
            writes.entry(&op.key).or_default().push(i);
        }
    }
    let no_writes = Vec::new();
    let supersedes = |later: usize, source: Source| -> bool {
        let w = &ops[later];
        w.ok && match source {
            Source::Initial => true,
            Source::Write(earlier) => later != earlier && w.invoke_ms > ops[earlier].complete_ms,
        }
    };

    let mut violations = Vec::new();
    let mut finals: HashMap<&str, Vec<usize>> = HashMap::new();
    for (r, read) in ops.iter().enumerate() {
        if read.kind == Kind::Write || !read.ok {
            continue;
        }
        if read.kind == Kind::Final {
            finals.entry(&read.key).or_default().push(r);
        }
        let key_writes = writes.get(read.key.as_str()).unwrap_or(&no_writes);
        // The write the read saw: one of that value begun before the read completed (the
        // latest such, should values repeat); a read of nothing saw a delete, or the start.
        let candidates = key_writes
            .iter()
            .copied()
            .filter(|&w| ops[w].value == read.value && ops[w].invoke_ms <= read.complete_ms);
        let source = match candidates.max_by_key(|&w| ops[w].invoke_ms) {
            Some(w) => Source::Write(w),
            None if read.value.is_none() => Source::Initial,
            None => {
                violations.push(Violation {
                    rule: Rule::PhantomRead,
                    message: format!(
                        "{} returned a value no write of the key had begun to write",
                        Described(read)
                    ),
                    ops: vec![r],
                });
                continue;
            }
        };
        let mut involved = |rule: Rule, w: usize, why: String| {
            let mut list = vec![r, w];
            if let Source::Write(seen) = source {
                list.push(seen);
            }
            violations.push(Violation {
                rule,
                message: format!("{} {why}: {}", Described(read), Described(&ops[w])),
                ops: list,
            });
        };
        // The earliest-completed write that superseded what the read saw, if it completed more
        // than the bound before the read began.
        if let Some(&w) = key_writes
            .iter()
            .filter(|&&w| supersedes(w, source) && ops[w].complete_ms + bound < read.invoke_ms)
            .min_by_key(|&&w| ops[w].complete_ms)
        {
            involved(
                Rule::StaleRead,
                w,
                format!(
                    "returned a value superseded {} ms before it began (bound {bound} ms) by",
                    read.invoke_ms - ops[w].complete_ms
                ),
            );
        }
        if let Some(&w) = key_writes
            .iter()
            .filter(|&&w| {
                ops[w].edge == read.edge
                    && supersedes(w, source)
                    && ops[w].complete_ms <= read.invoke_ms
            })
            .min_by_key(|&&w| ops[w].complete_ms)
        {
            involved(
                Rule::ReadYourWrites,
                w,
                "missed the same edge's earlier completed write".to_owned(),
            );
        }
    }

    let mut keys: Vec<&&str> = finals.keys().collect();
    keys.sort();
    for key in keys {
        let reads = &finals[*key];
        let first = &ops[reads[0]];
        if let Some(&other) = reads.iter().find(|&&f| ops[f].value != first.value) {
            violations.push(Violation {
                rule: Rule::Divergence,
                message: format!(
                    "edges ended with different values for {key:?}: {} but {}",
                    Described(first),
                    Described(&ops[other])
                ),
                ops: vec![reads[0], other],
            });
        }
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Meta;

    const BOUND: u64 = 1_000;

    fn op(kind: Kind, key: &str, value: Option<&str>, edge: usize, at: (u64, u64)) -> Op {
        Op {
            kind,
            key: key.into(),
            value: value.map(str::to_owned),
            edge,
            invoke_ms: at.0,
            complete_ms: at.1,
            ok: true,
        }
    }

    fn write(key: &str, value: &str, edge: usize, at: (u64, u64)) -> Op {
        op(Kind::Write, key, Some(value), edge, at)
    }

    fn read(key: &str, value: Option<&str>, edge: usize, at: (u64, u64)) -> Op {
        op(Kind::Read, key, value, edge, at)
    }

    fn final_read(key: &str, value: Option<&str>, edge: usize) -> Op {
        op(Kind::Final, key, value, edge, (100_000, 100_001))
    }

    fn rules(ops: Vec<Op>) -> Vec<Rule> {
        let history = History {
            meta: Meta {
                bound_ms: BOUND,
                ..Meta::default()
            },
            ops,
        };
        check(&history).into_iter().map(|v| v.rule).collect()
    }

    /// Workers KV's model, followed: a stale read within the bound, a missing key read before
    /// its write arrived, concurrent writes converging on either value, reads of own writes.
    #[test]
    fn a_valid_history_passes() {
        assert_eq!(
            rules(vec![
                read("a", None, 1, (0, 1)),
                write("a", "a1", 0, (10, 12)),
                read("a", Some("a1"), 0, (13, 14)),
                // Edge 1 cached the miss: still absent 900 ms later, within the bound.
                read("a", None, 1, (900, 901)),
                write("a", "a2", 0, (1_000, 1_002)),
                // Still the superseded a1, 500 ms after a2 completed: within the bound.
                read("a", Some("a1"), 1, (1_500, 1_501)),
                read("a", Some("a2"), 1, (2_100, 2_101)),
                // Concurrent writes at two edges; either may win, the same everywhere.
                write("b", "b1", 0, (3_000, 3_010)),
                write("b", "b2", 1, (3_005, 3_012)),
                read("b", Some("b1"), 2, (3_100, 3_101)),
                final_read("a", Some("a2"), 0),
                final_read("a", Some("a2"), 1),
                final_read("b", Some("b2"), 0),
                final_read("b", Some("b2"), 1),
                final_read("b", Some("b2"), 2),
            ]),
            vec![]
        );
    }

    #[test]
    fn a_value_nobody_wrote_is_a_phantom() {
        assert_eq!(
            rules(vec![
                write("a", "a1", 0, (0, 1)),
                read("a", Some("made-up"), 1, (2, 3)),
                // Written, but only after the read completed.
                read("a", Some("a2"), 1, (4, 5)),
                write("a", "a2", 0, (6, 7)),
            ]),
            vec![Rule::PhantomRead, Rule::PhantomRead]
        );
    }

    #[test]
    fn a_value_superseded_longer_than_the_bound_is_stale() {
        assert_eq!(
            rules(vec![
                write("a", "a1", 0, (0, 1)),
                write("a", "a2", 0, (10, 20)),
                read("a", Some("a1"), 1, (20 + BOUND + 1, 20 + BOUND + 2)),
                // A miss long after the first write completed is stale too.
                read("a", None, 2, (5_000, 5_001)),
            ]),
            vec![Rule::StaleRead, Rule::StaleRead]
        );
    }

    #[test]
    fn missing_a_write_at_the_same_edge_breaks_read_your_writes() {
        assert_eq!(
            rules(vec![
                write("a", "a1", 0, (0, 1)),
                write("a", "a2", 1, (10, 11)),
                read("a", Some("a1"), 1, (12, 13)),
                // The same read at another edge is allowed (within the bound).
                read("a", Some("a1"), 2, (12, 13)),
            ]),
            vec![Rule::ReadYourWrites]
        );
    }

    #[test]
    fn edges_that_end_apart_diverge() {
        let violations = check(&History {
            meta: Meta {
                bound_ms: BOUND,
                ..Meta::default()
            },
            ops: vec![
                write("a", "a1", 0, (0, 5)),
                write("a", "a2", 1, (1, 6)),
                final_read("a", Some("a1"), 0),
                final_read("a", Some("a2"), 1),
            ],
        });
        assert_eq!(violations.len(), 1);
        assert_eq!(violations[0].rule, Rule::Divergence);
        assert_eq!(violations[0].ops, vec![2, 3]);
        assert!(
            violations[0].message.contains("\"a1\""),
            "{}",
            violations[0].message
        );
    }

    #[test]
    fn a_failed_write_may_be_read_but_supersedes_nothing() {
        let mut failed = write("a", "a2", 0, (10, 2_000));
        failed.ok = false;
        assert_eq!(
            rules(vec![
                write("a", "a1", 0, (0, 1)),
                failed,
                read("a", Some("a2"), 1, (2_100, 2_101)),
                read("a", Some("a1"), 1, (9_000, 9_001)),
            ]),
            vec![]
        );
    }
}
