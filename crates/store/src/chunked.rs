//! Large values in pieces: a [`Backend`] over another that stores each large value of
//! [`Tree::Records`] and [`Tree::Log`] as pieces of [`CHUNK`] bytes in [`Tree::Chunks`].
//!
//! **Why.** An engine with a write-ahead journal copies each value it journals: fjall 3
//! serialises every item into its journal writer's buffer (which keeps its largest size for as
//! long as the journal file lives) and LZ4-compresses values of 4 KiB and more into a buffer of
//! their size first. A 25 MiB value that does not compress thus cost two more copies of itself
//! at every node that stored it, beyond the request's own, and a node's memory grew four times
//! the body (issue 16's bound is three). Stored as pieces that are slices of the value's one
//! buffer, nothing of the journal's grows past a piece.
//!
//! **How.** A value longer than [`CHUNK`] becomes, in its own tree, a marker: a zero byte (no
//! value of these trees begins with one: every encoding of a record or a change starts with its
//! format byte, 1 or more), the pieces' id and the value's length. The pieces are
//! [`Tree::Chunks`] entries keyed by id and index, and an owner entry in [`Tree::Meta`]
//! (`chunked/<id>` → tree, length, key) lets an open find, without reading any piece, which keys
//! have pieces: the wrapper keeps that in memory, so that a batch replacing or removing such a
//! key removes its pieces in the same atomic batch (nothing is left behind by a crash, and no
//! small write pays a read for this). Ids are never reused while their pieces exist, so a
//! reader that finds a marker either reads exactly that value's pieces or finds them gone (the
//! key was written again meanwhile) and reads the key again. Within a batch, a value's pieces
//! come before its marker and old pieces go after everything else, which keeps this true for
//! an engine whose readers can see a batch half applied (fjall, as `commit` explains).

use std::collections::HashMap;
use std::ops::Bound;
use std::sync::Mutex;

use bytes::{Bytes, BytesMut};

use crate::backend::{Backend, BackendError, Batch, Entries, Op, Tree};

/// Size of a piece; a value longer than this is stored in pieces. Large enough that a piece
/// is not mostly bookkeeping, small enough that the buffers an engine fills per item stay
/// small next to the largest value (25 MiB).
pub const CHUNK: usize = 64 * 1024;

/// First byte of a marker; never the first byte of a record or a change.
const MARKER: u8 = 0;
/// A marker: [`MARKER`], id, length.
const MARKER_LEN: usize = 1 + 8 + 8;
/// Prefix of the [`Tree::Meta`] keys of owner entries (followed by the id, big-endian).
const OWNER: &[u8] = b"chunked/";

/// The trees whose values may be large, as indexes into [`Owners::keys`].
fn slot(tree: Tree) -> Option<usize> {
    match tree {
        Tree::Records => Some(0),
        Tree::Log => Some(1),
        _ => None,
    }
}

/// A value stored in pieces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Pieces {
    id: u64,
    len: u64,
}

impl Pieces {
    fn marker(self) -> Vec<u8> {
        let mut m = Vec::with_capacity(MARKER_LEN);
        m.push(MARKER);
        m.extend_from_slice(&self.id.to_be_bytes());
        m.extend_from_slice(&self.len.to_be_bytes());
        m
    }

    /// The pieces a value of a tree that may hold them refers to, if it is a marker.
    fn of_value(value: &[u8]) -> Result<Option<Self>, BackendError> {
        match value.first() {
            Some(&MARKER) if value.len() == MARKER_LEN => Ok(Some(Pieces {
                id: number(&value[1..9]),
                len: number(&value[9..17]),
            })),
            Some(&MARKER) => Err(broken("a malformed marker of a large value")),
            _ => Ok(None),
        }
    }

    fn count(self) -> u64 {
        self.len.div_ceil(CHUNK as u64)
    }

    fn first_key(self) -> Vec<u8> {
        chunk_key(self.id, 0)
    }

    fn end_key(self) -> Vec<u8> {
        chunk_key(self.id, self.count())
    }

    /// Stages the removal of the pieces and of their owner entry.
    fn remove(self, batch: &mut Batch) {
        for index in 0..self.count() {
            batch.remove(Tree::Chunks, chunk_key(self.id, index));
        }
        batch.remove(Tree::Meta, owner_key(self.id));
    }
}

fn number(bytes: &[u8]) -> u64 {
    u64::from_be_bytes(bytes.try_into().expect("8 bytes"))
}

fn broken(what: &'static str) -> BackendError {
    BackendError::Engine {
        engine: "chunked",
        source: what.into(),
    }
}

/// The [`Tree::Chunks`] key of piece `index` of `id`: both big-endian, so a value's pieces
/// are one range in order. (An index fits in 4 bytes; it is kept as 8 for simplicity of the
/// range end, which is one past the last.)
fn chunk_key(id: u64, index: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(16);
    k.extend_from_slice(&id.to_be_bytes());
    k.extend_from_slice(&index.to_be_bytes());
    k
}

fn owner_key(id: u64) -> Vec<u8> {
    [OWNER, &id.to_be_bytes()].concat()
}

/// An owner entry's value: the tree, the value's length, the key.
fn owner_value(tree: Tree, len: u64, key: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(9 + key.len());
    v.push(tree.index());
    v.extend_from_slice(&len.to_be_bytes());
    v.extend_from_slice(key);
    v
}

/// Which keys have pieces, as the committed batches left it.
#[derive(Default)]
struct Owners {
    /// Per tree that may hold large values (see [`slot`]): key → its pieces.
    keys: [HashMap<Vec<u8>, Pieces>; 2],
    /// The next id to hand out: above every id with pieces on disk.
    next_id: u64,
}

/// A [`Backend`] that stores large values of [`Tree::Records`] and [`Tree::Log`] in pieces;
/// see the module documentation.
pub struct Chunked<B> {
    inner: B,
    /// Held from the start of a commit to the end of its bookkeeping, so that the map follows
    /// the order in which batches reached the engine.
    owners: Mutex<Owners>,
}

impl<B: Backend> Chunked<B> {
    /// Wraps `inner`, reading which keys have pieces from its owner entries.
    pub fn new(inner: B) -> Result<Self, BackendError> {
        let mut owners = Owners {
            next_id: 1,
            ..Owners::default()
        };
        for entry in inner.range(Tree::Meta, Bound::Included(OWNER), Bound::Unbounded) {
            let (k, v) = entry?;
            let Some(id) = k.strip_prefix(OWNER) else {
                break;
            };
            if id.len() != 8 || v.len() < 9 {
                return Err(broken("a malformed owner entry of a large value"));
            }
            let id = number(id);
            let slot = Tree::ALL
                .iter()
                .find(|tree| tree.index() == v[0])
                .and_then(|tree| slot(*tree))
                .ok_or_else(|| broken("an owner entry of a large value names no such tree"))?;
            let pieces = Pieces {
                id,
                len: number(&v[1..9]),
            };
            owners.keys[slot].insert(v[9..].to_vec(), pieces);
            owners.next_id = owners.next_id.max(id + 1);
        }
        Ok(Chunked {
            inner,
            owners: Mutex::new(owners),
        })
    }

    /// The value of `pieces`, or `None` if they are gone (their key was written again since
    /// its marker was read).
    fn assemble(&self, pieces: Pieces) -> Result<Option<Bytes>, BackendError> {
        let len = usize::try_from(pieces.len).map_err(|_| broken("a large value's length"))?;
        let mut value = BytesMut::with_capacity(len);
        let (first, end) = (pieces.first_key(), pieces.end_key());
        for entry in self
            .inner
            .range(Tree::Chunks, Bound::Included(&first), Bound::Excluded(&end))
        {
            let piece = entry?.1;
            if value.len() + piece.len() > len {
                return Err(broken("a large value's pieces are longer than it"));
            }
            value.extend_from_slice(&piece);
        }
        Ok((value.len() == len).then(|| value.freeze()))
    }

    /// `value` as read from `tree` under `key`, its pieces put together if it is a marker;
    /// `None` if the key was written again meanwhile and is now gone.
    fn resolve(&self, tree: Tree, key: &[u8], value: Bytes) -> Result<Option<Bytes>, BackendError> {
        if slot(tree).is_none() {
            return Ok(Some(value));
        }
        let Some(pieces) = Pieces::of_value(&value)? else {
            return Ok(Some(value));
        };
        if let Some(whole) = self.assemble(pieces)? {
            return Ok(Some(whole));
        }
        // The pieces went with a later write of the key: read what is there now.
        let mut seen = pieces;
        loop {
            let Some(value) = self.inner.get(tree, key)? else {
                return Ok(None);
            };
            let Some(pieces) = Pieces::of_value(&value)? else {
                return Ok(Some(value));
            };
            if let Some(whole) = self.assemble(pieces)? {
                return Ok(Some(whole));
            }
            if pieces == seen {
                // The same marker twice, its pieces missing both times: not a race.
                return Err(broken("a large value's pieces are missing"));
            }
            seen = pieces;
        }
    }

    /// Stages `op` of a tree that may hold large values into `out`, given the pieces its key
    /// has now, whose removal goes to `removals`; returns the pieces it will have.
    fn stage(
        owners: &mut Owners,
        out: &mut Batch,
        removals: &mut Batch,
        op: Op,
        old: Option<Pieces>,
    ) -> (Vec<u8>, Option<Pieces>) {
        if let Some(old) = old {
            old.remove(removals);
        }
        match op {
            Op::Put { tree, key, value } if value.len() > CHUNK => {
                let pieces = Pieces {
                    id: owners.next_id,
                    len: value.len() as u64,
                };
                owners.next_id += 1;
                for (index, start) in (0..value.len()).step_by(CHUNK).enumerate() {
                    let end = (start + CHUNK).min(value.len());
                    // A slice shares the value's buffer: no piece is a copy.
                    out.put(
                        Tree::Chunks,
                        chunk_key(pieces.id, index as u64),
                        value.slice(start..end),
                    );
                }
                out.put(
                    Tree::Meta,
                    owner_key(pieces.id),
                    owner_value(tree, pieces.len, &key),
                );
                out.put(tree, key.clone(), pieces.marker());
                (key, Some(pieces))
            }
            Op::Put { tree, key, value } => {
                out.put(tree, key.clone(), value);
                (key, None)
            }
            Op::Remove { tree, key } => {
                out.remove(tree, key.clone());
                (key, None)
            }
        }
    }
}

/// The tree and key an op writes, with the slot of a tree that may hold large values.
fn target(op: &Op) -> (Option<usize>, &[u8]) {
    match op {
        Op::Put { tree, key, .. } | Op::Remove { tree, key } => (slot(*tree), key),
    }
}

fn is_large(op: &Op) -> bool {
    matches!(op, Op::Put { tree, value, .. } if slot(*tree).is_some() && value.len() > CHUNK)
}

impl<B: Backend> Backend for Chunked<B> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Bytes>, BackendError> {
        match self.inner.get(tree, key)? {
            Some(value) => self.resolve(tree, key, value),
            None => Ok(None),
        }
    }

    /// A large value's head is its first piece, not the whole value put together.
    fn get_head(&self, tree: Tree, key: &[u8], len: usize) -> Result<Option<Bytes>, BackendError> {
        let Some(value) = self.inner.get(tree, key)? else {
            return Ok(None);
        };
        if slot(tree).is_some() && len <= CHUNK {
            if let Some(pieces) = Pieces::of_value(&value)? {
                if let Some(first) = self.inner.get(Tree::Chunks, &pieces.first_key())? {
                    return Ok(Some(first));
                }
                // Gone with a later write of the key: read that.
            }
        }
        self.resolve(tree, key, value)
    }

    fn range(&self, tree: Tree, from: Bound<&[u8]>, to: Bound<&[u8]>) -> Entries<'_> {
        let entries = self.inner.range(tree, from, to);
        if slot(tree).is_none() {
            return entries;
        }
        Box::new(entries.filter_map(move |entry| {
            let (key, value) = match entry {
                Ok(entry) => entry,
                Err(e) => return Some(Err(e)),
            };
            match self.resolve(tree, &key, value) {
                Ok(Some(value)) => Some(Ok((key, value))),
                // Removed since the scan began.
                Ok(None) => None,
                Err(e) => Some(Err(e)),
            }
        }))
    }

    fn commit(&self, batch: Batch) -> Result<(), BackendError> {
        let mut owners = self.owners.lock().expect("owners lock");
        let ops = batch.into_ops();
        // The keys whose pieces this batch touches (a large value comes, or one is there),
        // each with the index of its last op: only that one counts (a batch is atomic), since
        // staging earlier ones too could put and remove one piece in a single batch, whose
        // order an engine need not keep.
        let mut last: [HashMap<Vec<u8>, usize>; 2] = Default::default();
        for (at, op) in ops.iter().enumerate() {
            if let (Some(slot), key) = target(op) {
                if is_large(op) || owners.keys[slot].contains_key(key) {
                    last[slot].insert(key.to_vec(), at);
                }
            }
        }
        if last.iter().all(HashMap::is_empty) {
            // The common case: no large value here, none coming.
            return self.inner.commit(Batch::from_ops(ops));
        }
        // A later small write of an involved key counts as its last op too.
        for (at, op) in ops.iter().enumerate() {
            if let (Some(slot), key) = target(op) {
                if let Some(last) = last[slot].get_mut(key) {
                    *last = at;
                }
            }
        }
        let mut out = Batch::new();
        let mut removals = Batch::new();
        let mut after = Vec::new();
        for (at, op) in ops.into_iter().enumerate() {
            let (slot, last_at, old) = match target(&op) {
                (Some(slot), key) => match last[slot].get(key) {
                    Some(last_at) => (slot, *last_at, owners.keys[slot].get(key).copied()),
                    None => {
                        out.push(op);
                        continue;
                    }
                },
                (None, _) => {
                    out.push(op);
                    continue;
                }
            };
            if last_at != at {
                continue;
            }
            let (key, new) = Self::stage(&mut owners, &mut out, &mut removals, op, old);
            after.push((slot, key, new));
        }
        // Old pieces go last. fjall makes a batch's items visible one by one as it applies
        // them (its reads do not wait for a batch to be published), so a reader may see part
        // of a batch; in this order, one that finds pieces missing and reads the key again
        // finds the new marker or value, and a marker it finds has all its pieces.
        for op in removals.into_ops() {
            out.push(op);
        }
        // Ids handed out to a batch that fails are not handed out again: nothing needs them.
        self.inner.commit(out)?;
        for (slot, key, new) in after {
            match new {
                Some(pieces) => owners.keys[slot].insert(key, pieces),
                None => owners.keys[slot].remove(&key),
            };
        }
        Ok(())
    }

    fn sync(&self) -> Result<(), BackendError> {
        self.inner.sync()
    }

    fn size_on_disk(&self) -> Result<u64, BackendError> {
        self.inner.size_on_disk()
    }

    /// Compacting a tree that may hold large values compacts the pieces too: removing such
    /// values removed pieces.
    fn compact(&self, tree: Tree) -> Result<(), BackendError> {
        self.inner.compact(tree)?;
        if slot(tree).is_some() {
            self.inner.compact(Tree::Chunks)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use super::*;
    use crate::{FjallBackend, SledBackend};

    type Open = fn(&Path) -> Box<dyn Backend>;

    /// Each engine under the wrapper: the wrapper is engine-independent.
    fn engines() -> [(&'static str, Open); 2] {
        [
            ("fjall", |dir| {
                Box::new(Chunked::new(FjallBackend::open(dir).unwrap()).unwrap())
            }),
            ("sled", |dir| {
                Box::new(Chunked::new(SledBackend::open(dir).unwrap()).unwrap())
            }),
        ]
    }

    /// A value of `len` bytes that no shifted or truncated copy of it equals.
    fn value(len: usize, seed: u8) -> Bytes {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8)
            .collect()
    }

    fn count(backend: &dyn Backend, tree: Tree) -> usize {
        backend
            .range(tree, Bound::Unbounded, Bound::Unbounded)
            .count()
    }

    fn put(backend: &dyn Backend, tree: Tree, key: &[u8], value: Bytes) {
        let mut batch = Batch::new();
        batch.put(tree, key.to_vec(), value);
        backend.commit(batch).unwrap();
    }

    #[test]
    fn a_large_value_is_stored_in_pieces_and_read_whole() {
        for (engine, open) in engines() {
            let dir = tempfile::tempdir().unwrap();
            let backend = open(dir.path());
            let large = value(3 * CHUNK + 17, 1);
            let edge = value(CHUNK, 2);
            let mut batch = Batch::new();
            batch.put(Tree::Records, b"large".to_vec(), large.clone());
            batch.put(Tree::Records, b"small".to_vec(), edge.clone());
            batch.put(Tree::Log, 7u64.to_be_bytes().to_vec(), large.clone());
            // Only Records and Log values begin with a format byte; others stay as they are.
            batch.put(Tree::Meta, b"m".to_vec(), value(2 * CHUNK, 0));
            backend.commit(batch).unwrap();

            assert_eq!(
                backend.get(Tree::Records, b"large").unwrap(),
                Some(large.clone()),
                "{engine}"
            );
            assert_eq!(
                backend.get(Tree::Records, b"small").unwrap(),
                Some(edge.clone()),
                "{engine}"
            );
            assert_eq!(
                backend.get(Tree::Log, &7u64.to_be_bytes()).unwrap(),
                Some(large.clone())
            );
            assert_eq!(
                backend.get(Tree::Meta, b"m").unwrap(),
                Some(value(2 * CHUNK, 0))
            );
            let scanned: Vec<_> = backend
                .range(Tree::Records, Bound::Unbounded, Bound::Unbounded)
                .map(Result::unwrap)
                .collect();
            assert_eq!(
                scanned,
                vec![
                    (Bytes::from_static(b"large"), large.clone()),
                    (Bytes::from_static(b"small"), edge)
                ],
                "{engine}"
            );
            // Two values of four pieces each; a value of exactly one piece's size stays whole.
            assert_eq!(count(backend.as_ref(), Tree::Chunks), 8, "{engine}");
        }
    }

    #[test]
    fn writing_or_removing_a_large_value_removes_its_pieces_also_after_a_reopen() {
        for (engine, open) in engines() {
            let dir = tempfile::tempdir().unwrap();
            let backend = open(dir.path());
            put(backend.as_ref(), Tree::Records, b"a", value(2 * CHUNK, 1));
            put(backend.as_ref(), Tree::Records, b"a", value(5 * CHUNK, 2));
            assert_eq!(count(backend.as_ref(), Tree::Chunks), 5, "{engine}");
            put(backend.as_ref(), Tree::Records, b"a", value(10, 3));
            assert_eq!(count(backend.as_ref(), Tree::Chunks), 0, "{engine}");
            assert_eq!(
                backend.get(Tree::Records, b"a").unwrap(),
                Some(value(10, 3))
            );

            put(
                backend.as_ref(),
                Tree::Records,
                b"b",
                value(2 * CHUNK + 1, 4),
            );
            put(backend.as_ref(), Tree::Log, b"c", value(CHUNK + 1, 5));
            backend.sync().unwrap();
            drop(backend);
            // A reopened node knows which keys have pieces without reading any of them.
            let backend = open(dir.path());
            assert_eq!(count(backend.as_ref(), Tree::Chunks), 5, "{engine}");
            let mut batch = Batch::new();
            batch.remove(Tree::Records, b"b".to_vec());
            batch.put(Tree::Log, b"c".to_vec(), value(CHUNK + 1, 6));
            backend.commit(batch).unwrap();
            assert_eq!(count(backend.as_ref(), Tree::Chunks), 2, "{engine}");
            assert_eq!(backend.get(Tree::Records, b"b").unwrap(), None);
            assert_eq!(
                backend.get(Tree::Log, b"c").unwrap(),
                Some(value(CHUNK + 1, 6))
            );
            // Ids are not handed out again: the old pieces of c went, the new ones are there.
            let owners = count(backend.as_ref(), Tree::Meta);
            assert_eq!(owners, 1, "{engine}: one owner entry, c's");
        }
    }

    /// A head read of a large value reads its first piece, not the whole value.
    #[test]
    fn the_head_of_a_large_value_is_its_first_piece() {
        for (engine, open) in engines() {
            let dir = tempfile::tempdir().unwrap();
            let backend = open(dir.path());
            let large = value(3 * CHUNK, 1);
            put(backend.as_ref(), Tree::Records, b"large", large.clone());
            put(backend.as_ref(), Tree::Records, b"small", value(100, 2));
            let head = backend
                .get_head(Tree::Records, b"large", 21)
                .unwrap()
                .unwrap();
            assert_eq!(head, large.slice(..CHUNK), "{engine}");
            let small = backend.get_head(Tree::Records, b"small", 21).unwrap();
            assert_eq!(small, Some(value(100, 2)), "{engine}");
            assert_eq!(backend.get_head(Tree::Records, b"none", 21).unwrap(), None);
        }
    }

    #[test]
    fn only_the_last_write_of_a_key_in_a_batch_counts() {
        for (engine, open) in engines() {
            let dir = tempfile::tempdir().unwrap();
            let backend = open(dir.path());
            for last in [value(3 * CHUNK, 9), value(5, 9)] {
                let mut batch = Batch::new();
                batch.put(Tree::Records, b"k".to_vec(), value(2 * CHUNK, 7));
                batch.put(Tree::Records, b"k".to_vec(), value(1, 8));
                batch.put(Tree::Records, b"k".to_vec(), last.clone());
                backend.commit(batch).unwrap();
                assert_eq!(
                    backend.get(Tree::Records, b"k").unwrap(),
                    Some(last.clone())
                );
                let pieces = if last.len() > CHUNK { 3 } else { 0 };
                assert_eq!(count(backend.as_ref(), Tree::Chunks), pieces, "{engine}");
            }
        }
    }

    /// A reader racing writes of the same key sees one whole value each time, never pieces of
    /// two, nor a marker.
    #[test]
    fn readers_racing_writes_see_whole_values() {
        for (engine, open) in engines() {
            let dir = tempfile::tempdir().unwrap();
            let backend: Arc<dyn Backend> = Arc::from(open(dir.path()));
            let sizes = [4 * CHUNK + 3, 2 * CHUNK, 100];
            put(backend.as_ref(), Tree::Records, b"k", value(sizes[0], 0));
            let done = Arc::new(AtomicBool::new(false));
            let writer = {
                let (backend, done) = (backend.clone(), done.clone());
                std::thread::spawn(move || {
                    for round in 0..300usize {
                        let size = sizes[round % sizes.len()];
                        put(
                            backend.as_ref(),
                            Tree::Records,
                            b"k",
                            value(size, round as u8),
                        );
                    }
                    done.store(true, Ordering::Release);
                })
            };
            let mut reads = 0;
            while !done.load(Ordering::Acquire) || reads < 100 {
                let read = match backend.get(Tree::Records, b"k") {
                    Ok(read) => read.expect("never absent"),
                    Err(e) => panic!("{engine}: {e}"),
                };
                let seed = read[0];
                assert!(
                    sizes.contains(&read.len()),
                    "{engine}: {} bytes",
                    read.len()
                );
                assert_eq!(read, value(read.len(), seed), "{engine}: a mixed value");
                reads += 1;
            }
            writer.join().unwrap();
        }
    }
}
