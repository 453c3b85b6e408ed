//! Core types of driftkv: what a key, a value, a namespace and a stored record are, the limits
//! Workers KV imposes on them, the errors a client can see (each with its Cloudflare error code
//! and HTTP status), list cursors, and the [`KvService`] trait that every server role implements.
//!
//! This crate does no I/O, so everything here is cheap to unit-test and safe to share between
//! the storage layer, the servers and the clients.

pub mod change;
pub mod cluster;
pub mod cursor;
pub mod error;
pub mod faults;
pub mod key;
pub mod limits;
pub mod namespace;
pub mod record;
pub mod service;
pub mod time;
pub mod upstream;

pub use change::{Change, LogEntry};
pub use cursor::ListCursor;
pub use error::{KvError, WriteKind};
pub use namespace::{Namespace, NamespaceId};
pub use record::{KeyInfo, LiveValue, Record, RecordView, Version};
pub use service::{KvService, ListPage, ListRequest, Write, WriteOp, WriteOutcome, WriteResult};
