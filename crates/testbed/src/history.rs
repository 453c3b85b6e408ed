//! Operation histories: every operation a testbed experiment issues, one JSON object per line.
//!
//! ```text
//! {"kind":"meta","bound_ms":61000,"cache_ttl_s":60,"edges":3}
//! {"kind":"write","key":"k1","value":"v-1","edge":0,"invoke_ms":1000,"complete_ms":1004,"ok":true}
//! {"kind":"read","key":"k1","value":"v-1","edge":2,"invoke_ms":1100,"complete_ms":1101,"ok":true}
//! {"kind":"final","key":"k1","value":"v-1","edge":1,"invoke_ms":90000,"complete_ms":90001,"ok":true}
//! ```
//!
//! Times are milliseconds on one clock (the testbed's). A write with `"value": null` is a
//! delete; a read with `"value": null` found nothing. `final` reads are taken after the
//! workload has stopped and replication has had time to settle.

use std::io::{BufRead, Write};

use serde::{Deserialize, Serialize};

/// What an operation was.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A put (or, with no value, a delete).
    Write,
    /// A read during the workload.
    Read,
    /// A read after the workload, for the convergence check.
    Final,
}

/// One operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    /// What it was.
    pub kind: Kind,
    /// The key.
    pub key: String,
    /// Written or read value; `None` for a delete, or a read that found nothing.
    pub value: Option<String>,
    /// The edge it went to (its index in the experiment).
    pub edge: usize,
    /// When it was sent.
    pub invoke_ms: u64,
    /// When its answer came.
    pub complete_ms: u64,
    /// Whether it succeeded. A failed write may still have taken effect (a timeout).
    pub ok: bool,
}

/// The experiment's parameters, the history's first line.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// How stale a read may be: a value superseded longer ago than this must not be read
    /// (the cache TTL plus the replication lag bound).
    pub bound_ms: u64,
    /// The `cacheTtl` the reads used, in seconds.
    #[serde(default)]
    pub cache_ttl_s: u64,
    /// How many edges took part.
    #[serde(default)]
    pub edges: usize,
}

/// A history: its parameters and its operations, in the order they were recorded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct History {
    /// Parameters.
    pub meta: Meta,
    /// Operations.
    pub ops: Vec<Op>,
}

/// A line of a history file.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Line {
    Meta(MetaLine),
    Op(Op),
}

#[derive(Serialize, Deserialize)]
struct MetaLine {
    kind: MetaKind,
    #[serde(flatten)]
    meta: Meta,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum MetaKind {
    Meta,
}

/// A history file that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// Reading failed.
    #[error("cannot read the history: {0}")]
    Io(#[from] std::io::Error),
    /// A line is not a history record.
    #[error("line {line}: {reason}")]
    Malformed {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// The history has no `meta` line.
    #[error("the history has no meta line (with bound_ms)")]
    NoMeta,
}

impl History {
    /// The history of an experiment: `ops`, recorded in any order, sorted by when they began,
    /// with the experiment's staleness bound, cache TTL and number of edges.
    pub fn of(
        bound: std::time::Duration,
        cache_ttl_s: u64,
        edges: usize,
        mut ops: Vec<Op>,
    ) -> Self {
        ops.sort_by_key(|op| (op.invoke_ms, op.complete_ms));
        History {
            meta: Meta {
                bound_ms: bound.as_millis() as u64,
                cache_ttl_s,
                edges,
            },
            ops,
        }
    }

    /// Reads a history in the JSON-lines format.
    pub fn read(reader: impl BufRead) -> Result<History, HistoryError> {
        let mut meta = None;
        let mut ops = Vec::new();
        for (index, line) in reader.lines().enumerate() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<Line>(&line) {
                Ok(Line::Meta(m)) => meta = Some(m.meta),
                Ok(Line::Op(op)) => ops.push(op),
                Err(e) => {
                    return Err(HistoryError::Malformed {
                        line: index + 1,
                        reason: e.to_string(),
                    })
                }
            }
        }
        Ok(History {
            meta: meta.ok_or(HistoryError::NoMeta)?,
            ops,
        })
    }

    /// Writes the history in the JSON-lines format.
    pub fn write(&self, mut out: impl Write) -> std::io::Result<()> {
        let meta = MetaLine {
            kind: MetaKind::Meta,
            meta: self.meta.clone(),
        };
        serde_json::to_writer(&mut out, &meta)?;
        out.write_all(b"\n")?;
        for op in &self.ops {
            serde_json::to_writer(&mut out, op)?;
            out.write_all(b"\n")?;
        }
        out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_history_round_trips_through_its_file_format() {
        let history = History {
            meta: Meta {
                bound_ms: 61_000,
                cache_ttl_s: 60,
                edges: 2,
            },
            ops: vec![
                Op {
                    kind: Kind::Write,
                    key: "k".into(),
                    value: Some("v".into()),
                    edge: 0,
                    invoke_ms: 1,
                    complete_ms: 2,
                    ok: true,
                },
                Op {
                    kind: Kind::Read,
                    key: "k".into(),
                    value: None,
                    edge: 1,
                    invoke_ms: 3,
                    complete_ms: 4,
                    ok: true,
                },
            ],
        };
        let mut text = Vec::new();
        history.write(&mut text).unwrap();
        assert!(String::from_utf8_lossy(&text).starts_with("{\"kind\":\"meta\""));
        assert_eq!(History::read(&text[..]).unwrap(), history);
    }

    #[test]
    fn malformed_lines_are_named() {
        let text = "{\"kind\":\"meta\",\"bound_ms\":1}\n{\"kind\":\"write\"}\n";
        match History::read(text.as_bytes()) {
            Err(HistoryError::Malformed { line: 2, .. }) => {}
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            History::read("".as_bytes()),
            Err(HistoryError::NoMeta)
        ));
    }
}
