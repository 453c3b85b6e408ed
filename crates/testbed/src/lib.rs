//! driftkv's consistency testbed: the operation histories its experiments record, and the
//! checker that verifies a history against the consistency model driftkv promises (that of
//! Workers KV: bounded staleness, read-your-writes where the write was made, last-write-wins
//! convergence).

pub mod check;
pub mod faults;
pub mod history;
pub mod report;
pub mod staleness;
pub mod visibility;

pub use check::{check, Described, Rule, Violation};
pub use history::{History, HistoryError, Kind, Meta, Op};
