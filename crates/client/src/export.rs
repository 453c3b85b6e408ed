//! The export format of `driftkv kv export` and `import`: JSON lines, first a header naming
//! the format version and the namespace, then one line per key with its value's bytes in
//! base64, its metadata and its expiration. Both directions stream, so memory stays bounded
//! whatever the namespace's size.

use std::io::{BufRead, Write};

use base64::Engine as _;
use futures::{StreamExt as _, TryStreamExt as _};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{BulkItem, BulkReport, Client, Key, Namespace, Progress};

/// The format version this crate writes and reads.
pub const EXPORT_FORMAT: u64 = 1;

/// Values read at once while exporting.
const EXPORT_CONCURRENCY: usize = 16;

/// Keys whose expiration is nearer than this are not imported: the API refuses expirations
/// less than 60 s ahead, and they would be gone by the time anyone read them.
const MIN_EXPIRATION_AHEAD_SECS: u64 = 60;

/// The first line of an export.
#[derive(Serialize, Deserialize)]
struct ExportHeader {
    driftkv_export: u64,
    namespace: Namespace,
}

/// One key of an export.
#[derive(Serialize, Deserialize)]
struct ExportedKey {
    key: String,
    /// The value's bytes, base64.
    value: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    metadata: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expiration: Option<u64>,
}

/// Why an export or import failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// A request to the server failed.
    #[error(transparent)]
    Client(#[from] crate::Error),
    /// Reading or writing the export failed.
    #[error("cannot {doing} the export")]
    Io {
        /// `read` or `write`.
        doing: &'static str,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The input is empty.
    #[error("the export is empty")]
    Empty,
    /// The first line is not an export header.
    #[error("this is not a driftkv export")]
    NotAnExport(#[source] serde_json::Error),
    /// The export is of a format version this crate does not read.
    #[error("export format {found}; this driftkv reads format {EXPORT_FORMAT}")]
    Version {
        /// The version the header names.
        found: u64,
    },
    /// A key's line does not parse.
    #[error("line {line}")]
    Line {
        /// The line's number, from 1.
        line: u64,
        /// Why it does not parse.
        #[source]
        source: serde_json::Error,
    },
}

fn write_error(source: std::io::Error) -> ExportError {
    ExportError::Io {
        doing: "write",
        source,
    }
}

/// What an export wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Exported {
    /// Keys written.
    pub exported: u64,
    /// Keys listed but deleted or expired before their value was read.
    pub vanished: u64,
}

/// Writes namespace `namespace_id` to `out`: one page of keys at a time, its values read a
/// few at a time. `progress` advances by one per key written.
pub async fn export(
    client: &Client,
    namespace_id: &str,
    out: &mut impl Write,
    progress: &dyn Progress,
) -> Result<Exported, ExportError> {
    let namespace = client.namespace(namespace_id).await?;
    let header = ExportHeader {
        driftkv_export: EXPORT_FORMAT,
        namespace,
    };
    write_line(out, &header)?;
    let mut done = Exported::default();
    let mut cursor: Option<String> = None;
    loop {
        let page = client
            .list_keys(namespace_id, None, cursor.as_deref(), None)
            .await?;
        let values: Vec<(Key, Option<bytes::Bytes>)> = futures::stream::iter(page.keys)
            .map(|key| async move {
                let value = client.get(namespace_id, &key.name).await?;
                Ok::<_, crate::Error>((key, value))
            })
            .buffered(EXPORT_CONCURRENCY)
            .try_collect()
            .await?;
        for (key, value) in values {
            // Deleted or expired between the listing and the read.
            let Some(value) = value else {
                done.vanished += 1;
                continue;
            };
            let line = ExportedKey {
                key: key.name,
                value: base64::engine::general_purpose::STANDARD.encode(&value),
                metadata: key.metadata,
                expiration: key.expiration,
            };
            write_line(out, &line)?;
            done.exported += 1;
            progress.advance(1);
        }
        match page.cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    out.flush().map_err(write_error)?;
    Ok(done)
}

fn write_line(out: &mut impl Write, value: &impl Serialize) -> Result<(), ExportError> {
    serde_json::to_writer(&mut *out, value).map_err(|e| write_error(e.into()))?;
    out.write_all(b"\n").map_err(write_error)
}

/// What an import did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Imported {
    /// The namespace written to: the one given, or one created with the export's title.
    pub namespace_id: String,
    /// Keys skipped because they expire within a minute of `now`.
    pub skipped_expiring: u64,
    /// What the bulk writes did.
    pub report: BulkReport,
}

/// Loads an export from `input` into namespace `namespace_id` (or a new namespace with the
/// export's title), streaming its lines into API-sized bulk writes. Keys expiring less than a
/// minute after `now_secs` (unix seconds) are skipped and counted.
pub async fn import(
    client: &Client,
    namespace_id: Option<String>,
    input: impl BufRead,
    now_secs: u64,
    progress: &dyn Progress,
) -> Result<Imported, ExportError> {
    let read_error = |source| ExportError::Io {
        doing: "read",
        source,
    };
    let mut lines = input.lines();
    let header_line = lines
        .next()
        .transpose()
        .map_err(read_error)?
        .ok_or(ExportError::Empty)?;
    let header: ExportHeader =
        serde_json::from_str(&header_line).map_err(ExportError::NotAnExport)?;
    if header.driftkv_export != EXPORT_FORMAT {
        return Err(ExportError::Version {
            found: header.driftkv_export,
        });
    }
    let namespace_id = match namespace_id {
        Some(id) => id,
        None => client.create_namespace(&header.namespace.title).await?.id,
    };
    // The items are produced as the bulk writer asks for them; a bad line stops the stream and
    // is reported after.
    let mut failure: Option<ExportError> = None;
    let mut skipped_expiring = 0u64;
    let mut line = 1;
    let items = std::iter::from_fn(|| loop {
        if failure.is_some() {
            return None;
        }
        line += 1;
        let text = match lines.next()? {
            Ok(text) => text,
            Err(e) => {
                failure = Some(read_error(e));
                return None;
            }
        };
        if text.trim().is_empty() {
            continue;
        }
        let entry: ExportedKey = match serde_json::from_str(&text) {
            Ok(entry) => entry,
            Err(source) => {
                failure = Some(ExportError::Line { line, source });
                return None;
            }
        };
        if entry
            .expiration
            .is_some_and(|at| at < now_secs + MIN_EXPIRATION_AHEAD_SECS)
        {
            skipped_expiring += 1;
            continue;
        }
        return Some(BulkItem {
            key: entry.key,
            value: entry.value,
            base64: true,
            expiration: entry.expiration,
            expiration_ttl: None,
            metadata: entry.metadata,
        });
    });
    let report = client.bulk_put_all(&namespace_id, items, progress).await;
    if let Some(e) = failure {
        return Err(e);
    }
    Ok(Imported {
        namespace_id,
        skipped_expiring,
        report: report?,
    })
}
