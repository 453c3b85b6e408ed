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
//! [`Tree::Chunks`] entries keyed by id and index, written in the value's batch with an owner
//! entry in [`Tree::Meta`] (`chunked/<id>` → tree, key). A batch that writes or
//! removes a key whose value is in pieces replaces the key's owner entry with a garbage entry
//! (`chunked-garbage/<id>`), in the same atomic batch; the pieces themselves go afterwards, a
//! bounded batch at a time (a sweep that an open resumes), so that removing many large values
//! at once never makes one huge batch. To know which keys have pieces without a read per write,
//! the wrapper keeps in memory a count per hash of tree and key, built from the owner entries
//! at open (a few bytes per large value); only a write to such a hash reads the key's marker.
//!
//! **Readers.** Ids are never reused while their pieces exist, so a reader that finds a marker
//! either reads exactly that value's pieces or finds them gone (the key was written again
//! meanwhile) and reads the key again. Within a batch, a value's pieces come before its
//! marker, which keeps this true for an engine whose readers can see a batch half applied
//! (fjall: its reads do not wait for a batch to be published). A read of a value's head
//! (`get_head`, `range_heads`) reads only its first piece, and a scan of keys only none.
//!
//! **Compatibility.** A database written by this version can hold markers, which an older
//! driftkv cannot read: going back to an older binary needs a fresh data directory (an edge
//! refills from central; central's data has to be exported through the API).

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::ops::Bound;
use std::sync::{Mutex, MutexGuard};

use bytes::{Bytes, BytesMut};

use crate::backend::{Backend, BackendError, Batch, Entries, Op, Tree};

/// Size of a piece; a value longer than this is stored in pieces. Large enough that a piece
/// is not mostly bookkeeping, small enough that the buffers an engine fills per item stay
/// small next to the largest value (25 MiB).
pub const CHUNK: usize = 64 * 1024;

/// Most removals of pieces one sweep batch holds (fewer in unit tests, so that they can see a
/// sweep take several batches).
const SWEEP_OPS: usize = if cfg!(test) { 100 } else { 10_000 };

/// Most bytes a read reserves up front for a value put together from its pieces, so that a
/// corrupt length cannot make it reserve more: larger values (none are, at Workers KV's
/// limits) grow as their pieces come.
const RESERVE_AT_MOST: usize = 64 << 20;

/// Reads of a marker whose pieces went meanwhile before a reader stops racing the writers and
/// reads with commits held off.
const RACES: usize = 3;

/// First byte of a marker; never the first byte of a record or a change.
const MARKER: u8 = 0;
/// A marker: [`MARKER`], id, length.
const MARKER_LEN: usize = 1 + 8 + 8;
/// Prefix of the [`Tree::Meta`] keys of owner entries (followed by the id, big-endian).
const OWNER: &[u8] = b"chunked/";
/// Prefix of the [`Tree::Meta`] keys of garbage entries (followed by the id): pieces no value
/// refers to any more, with the value's length and how many pieces are already removed.
const GARBAGE: &[u8] = b"chunked-garbage/";

/// Whether values of `tree` may be stored in pieces.
fn chunked(tree: Tree) -> bool {
    matches!(tree, Tree::Records | Tree::Log)
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

    /// Stages the end of the value: its owner entry becomes a garbage entry with no piece
    /// removed yet.
    fn discard(self, batch: &mut Batch) {
        batch.remove(Tree::Meta, owner_key(self.id));
        batch.put(Tree::Meta, garbage_key(self.id), garbage_value(self.len, 0));
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
/// are one range in order.
fn chunk_key(id: u64, index: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(16);
    k.extend_from_slice(&id.to_be_bytes());
    k.extend_from_slice(&index.to_be_bytes());
    k
}

fn owner_key(id: u64) -> Vec<u8> {
    [OWNER, &id.to_be_bytes()].concat()
}

/// An owner entry's value: the tree, then the key.
fn owner_value(tree: Tree, key: &[u8]) -> Vec<u8> {
    [&[tree.index()], key].concat()
}

fn garbage_key(id: u64) -> Vec<u8> {
    [GARBAGE, &id.to_be_bytes()].concat()
}

/// A garbage entry's value: the value's length and how many of its pieces are removed.
fn garbage_value(len: u64, removed: u64) -> Vec<u8> {
    [len.to_be_bytes(), removed.to_be_bytes()].concat()
}

/// What the wrapper keeps in memory, as the committed batches left it.
struct Owners {
    /// How many values in pieces there are per hash of tree and key (see
    /// [`Chunked::hash`]): a key whose hash is absent has no pieces.
    hashes: HashMap<u64, u32>,
    /// The next id to hand out: above every id with pieces on disk.
    next_id: u64,
    /// Whether garbage entries may be waiting for a sweep.
    garbage: bool,
}

/// A [`Backend`] that stores large values of [`Tree::Records`] and [`Tree::Log`] in pieces;
/// see the module documentation.
pub struct Chunked<B> {
    inner: B,
    /// Held from the start of a commit to the end of its bookkeeping (and its sweep), so that
    /// the counts follow the order in which batches reached the engine.
    owners: Mutex<Owners>,
    hasher: RandomState,
}

impl<B: Backend> Chunked<B> {
    /// Wraps `inner`, counting which keys have pieces from its owner entries, and removes the
    /// pieces of garbage entries an earlier run left.
    pub fn new(inner: B) -> Result<Self, BackendError> {
        let hasher = RandomState::new();
        let mut owners = Owners {
            hashes: HashMap::new(),
            next_id: 1,
            garbage: true,
        };
        for prefix in [OWNER, GARBAGE] {
            for entry in inner.range(Tree::Meta, Bound::Included(prefix), Bound::Unbounded) {
                let (k, v) = entry?;
                let Some(id) = k.strip_prefix(prefix) else {
                    break;
                };
                if id.len() != 8 || v.is_empty() {
                    return Err(broken("a malformed entry of a large value"));
                }
                owners.next_id = owners.next_id.max(number(id) + 1);
                if prefix == OWNER {
                    let tree = Tree::ALL
                        .into_iter()
                        .find(|tree| tree.index() == v[0] && chunked(*tree))
                        .ok_or_else(|| broken("an owner entry names no such tree"))?;
                    *owners
                        .hashes
                        .entry(Self::hash_with(&hasher, tree, &v[1..]))
                        .or_default() += 1;
                }
            }
        }
        let chunked = Chunked {
            inner,
            owners: Mutex::new(owners),
            hasher,
        };
        let mut owners = chunked.owners()?;
        chunked.sweep(&mut owners);
        drop(owners);
        Ok(chunked)
    }

    fn hash_with(hasher: &RandomState, tree: Tree, key: &[u8]) -> u64 {
        hasher.hash_one((tree.index(), key))
    }

    /// A hash of `tree` and `key`, keyed per process so that no client can aim writes at one.
    fn hash(&self, tree: Tree, key: &[u8]) -> u64 {
        Self::hash_with(&self.hasher, tree, key)
    }

    fn owners(&self) -> Result<MutexGuard<'_, Owners>, BackendError> {
        self.owners.lock().map_err(|_| BackendError::Unusable {
            reason: "a write of large values failed half-way (it panicked); the store must be \
                     opened again"
                .into(),
            out_of_space: false,
        })
    }

    /// Removes the pieces of garbage entries, a batch of at most [`SWEEP_OPS`] removals at a
    /// time. A failure leaves the rest for the next sweep: the write that made the garbage is
    /// committed, and stray pieces take space, not correctness.
    fn sweep(&self, owners: &mut Owners) {
        while owners.garbage {
            match self.sweep_batch() {
                Ok(more) => owners.garbage = more,
                Err(e) => {
                    tracing::warn!(error = %e, "removing the pieces of replaced large values failed; retrying after the next write");
                    return;
                }
            }
        }
    }

    /// Commits one batch of a sweep; returns whether garbage is left.
    fn sweep_batch(&self) -> Result<bool, BackendError> {
        let mut waiting = Vec::new();
        for entry in self
            .inner
            .range(Tree::Meta, Bound::Included(GARBAGE), Bound::Unbounded)
        {
            let (k, v) = entry?;
            let Some(id) = k.strip_prefix(GARBAGE) else {
                break;
            };
            if id.len() != 8 || v.len() != 16 {
                return Err(broken("a malformed garbage entry of a large value"));
            }
            waiting.push((number(id), number(&v[..8]), number(&v[8..])));
            if waiting.len() >= SWEEP_OPS {
                break;
            }
        }
        let mut batch = Batch::new();
        let mut room = SWEEP_OPS as u64;
        for (id, len, removed) in waiting {
            let pieces = Pieces { id, len };
            let upto = pieces.count().min(removed + room);
            for index in removed..upto {
                batch.remove(Tree::Chunks, chunk_key(id, index));
            }
            room -= upto - removed;
            if upto == pieces.count() {
                batch.remove(Tree::Meta, garbage_key(id));
            } else {
                batch.put(Tree::Meta, garbage_key(id), garbage_value(len, upto));
            }
            if room == 0 {
                break;
            }
        }
        if batch.is_empty() {
            return Ok(false);
        }
        self.inner.commit(batch)?;
        Ok(true)
    }

    /// The value of `pieces`, or `None` if they are gone (their key was written again since
    /// its marker was read).
    fn assemble(&self, pieces: Pieces) -> Result<Option<Bytes>, BackendError> {
        let len = usize::try_from(pieces.len).map_err(|_| broken("a large value's length"))?;
        let mut value = BytesMut::with_capacity(len.min(RESERVE_AT_MOST));
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

    /// The entries of `tree` between `from` and `to`: each value whole, or with `head`, at
    /// least its first that many bytes (see [`Chunked::head`]).
    fn scan<'a>(
        &'a self,
        tree: Tree,
        from: Bound<&[u8]>,
        to: Bound<&[u8]>,
        head: Option<usize>,
    ) -> Entries<'a> {
        let entries = self.inner.range(tree, from, to);
        if !chunked(tree) {
            return entries;
        }
        Box::new(entries.filter_map(move |entry| {
            let (key, value) = match entry {
                Ok(entry) => entry,
                Err(e) => return Some(Err(e)),
            };
            let read = match head {
                Some(len) => self.head(tree, &key, value, len),
                None => self.resolve(tree, &key, value),
            };
            match read {
                Ok(Some(value)) => Some(Ok((key, value))),
                // Removed since the scan began.
                Ok(None) => None,
                Err(e) => Some(Err(e)),
            }
        }))
    }

    /// At least the first `len` bytes of `value`, stored under `key` in `tree`: a large
    /// value's first piece (nothing of it for `len` 0), else what [`Chunked::resolve`] makes of
    /// it.
    fn head(
        &self,
        tree: Tree,
        key: &[u8],
        value: Bytes,
        len: usize,
    ) -> Result<Option<Bytes>, BackendError> {
        if chunked(tree) && len <= CHUNK {
            if let Some(pieces) = Pieces::of_value(&value)? {
                if len == 0 {
                    return Ok(Some(Bytes::new()));
                }
                if let Some(first) = self.inner.get(Tree::Chunks, &pieces.first_key())? {
                    return Ok(Some(first));
                }
                // Gone with a later write of the key: read that.
            }
        }
        self.resolve(tree, key, value)
    }

    /// `value` as read from `tree` under `key`, its pieces put together if it is a marker;
    /// `None` if the key was written again meanwhile and is now gone.
    fn resolve(&self, tree: Tree, key: &[u8], value: Bytes) -> Result<Option<Bytes>, BackendError> {
        if !chunked(tree) {
            return Ok(Some(value));
        }
        let Some(pieces) = Pieces::of_value(&value)? else {
            return Ok(Some(value));
        };
        if let Some(whole) = self.assemble(pieces)? {
            return Ok(Some(whole));
        }
        // The pieces went with a later write of the key: read what is there now, a few times
        // racing the writers, then with commits held off, which must succeed.
        for race in 1..=RACES {
            let _held = if race == RACES {
                Some(self.owners()?)
            } else {
                None
            };
            let Some(value) = self.inner.get(tree, key)? else {
                return Ok(None);
            };
            let Some(pieces) = Pieces::of_value(&value)? else {
                return Ok(Some(value));
            };
            if let Some(whole) = self.assemble(pieces)? {
                return Ok(Some(whole));
            }
        }
        Err(broken("a large value's pieces are missing"))
    }

    /// Stages the last `op` of a key of a tree that may hold large values into `out`, given
    /// the pieces its key has now; returns the pieces it will have.
    fn stage(owners: &mut Owners, out: &mut Batch, op: Op, old: Option<Pieces>) -> Option<Pieces> {
        if let Some(old) = old {
            old.discard(out);
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
                out.put(Tree::Meta, owner_key(pieces.id), owner_value(tree, &key));
                // After its pieces: a reader that sees the marker finds them all.
                out.put(tree, key, pieces.marker());
                Some(pieces)
            }
            other => {
                out.push(other);
                None
            }
        }
    }
}

/// The tree and key an op writes, if values of the tree may be stored in pieces.
fn target(op: &Op) -> Option<(Tree, &[u8])> {
    match op {
        Op::Put { tree, key, .. } | Op::Remove { tree, key } => {
            chunked(*tree).then_some((*tree, key.as_slice()))
        }
    }
}

fn is_large(op: &Op) -> bool {
    matches!(op, Op::Put { tree, value, .. } if chunked(*tree) && value.len() > CHUNK)
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
        match self.inner.get(tree, key)? {
            Some(value) => self.head(tree, key, value, len),
            None => Ok(None),
        }
    }

    fn range(&self, tree: Tree, from: Bound<&[u8]>, to: Bound<&[u8]>) -> Entries<'_> {
        self.scan(tree, from, to, None)
    }

    /// Large values' heads, their first pieces (the whole value for a head longer than a
    /// piece); none of them for a scan of keys only.
    fn range_heads(
        &self,
        tree: Tree,
        from: Bound<&[u8]>,
        to: Bound<&[u8]>,
        len: usize,
    ) -> Entries<'_> {
        self.scan(tree, from, to, Some(len))
    }

    fn commit(&self, batch: Batch) -> Result<(), BackendError> {
        let mut owners = self.owners()?;
        let ops = batch.into_ops();
        // The keys whose pieces this batch touches (a large value comes, or one may be there),
        // each with the index of its last op: only that one counts (a batch is atomic), since
        // staging earlier ones too could write one piece or entry twice in a single batch,
        // whose order an engine need not keep.
        let mut last: HashMap<(Tree, &[u8]), usize> = HashMap::new();
        for (at, op) in ops.iter().enumerate() {
            if let Some((tree, key)) = target(op) {
                if is_large(op) || owners.hashes.contains_key(&self.hash(tree, key)) {
                    last.insert((tree, key), at);
                }
            }
        }
        if last.is_empty() {
            // The common case: no large value here, none coming.
            return self.inner.commit(Batch::from_ops(ops));
        }
        // A later small write of an involved key counts as its last op too.
        for (at, op) in ops.iter().enumerate() {
            if let Some(target) = target(op) {
                if let Some(last) = last.get_mut(&target) {
                    *last = at;
                }
            }
        }
        // What becomes of each op: passed on, dropped (not its key's last), or staged with
        // its key's hash and current pieces.
        let mut staged = Vec::with_capacity(ops.len());
        for (at, op) in ops.iter().enumerate() {
            let action = match target(op).and_then(|target| Some((target, *last.get(&target)?))) {
                None => None,
                Some((_, last_at)) if last_at != at => Some(None),
                Some(((tree, key), _)) => {
                    let hash = self.hash(tree, key);
                    let old = if owners.hashes.contains_key(&hash) {
                        match self.inner.get(tree, key)? {
                            Some(value) => Pieces::of_value(&value)?,
                            None => None,
                        }
                    } else {
                        None
                    };
                    Some(Some((hash, old)))
                }
            };
            staged.push(action);
        }
        drop(last);
        let mut out = Batch::new();
        let mut changes = Vec::new();
        for (op, action) in ops.into_iter().zip(staged) {
            match action {
                None => out.push(op),
                Some(None) => {}
                Some(Some((hash, old))) => {
                    let new = Self::stage(&mut owners, &mut out, op, old);
                    changes.push((hash, old.is_some(), new.is_some()));
                }
            }
        }
        self.inner.commit(out)?;
        for (hash, had, has) in changes {
            if had {
                if let Some(count) = owners.hashes.get_mut(&hash) {
                    *count -= 1;
                    if *count == 0 {
                        owners.hashes.remove(&hash);
                    }
                }
                owners.garbage = true;
            }
            if has {
                *owners.hashes.entry(hash).or_default() += 1;
            }
        }
        self.sweep(&mut owners);
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
        if chunked(tree) {
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

    /// Records the size of every batch that reaches the engine.
    struct Sizes {
        inner: FjallBackend,
        batches: Arc<std::sync::Mutex<Vec<usize>>>,
    }

    impl Backend for Sizes {
        fn name(&self) -> &'static str {
            "sizes"
        }
        fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Bytes>, BackendError> {
            self.inner.get(tree, key)
        }
        fn range(&self, tree: Tree, from: Bound<&[u8]>, to: Bound<&[u8]>) -> Entries<'_> {
            self.inner.range(tree, from, to)
        }
        fn commit(&self, batch: Batch) -> Result<(), BackendError> {
            self.batches.lock().unwrap().push(batch.len());
            self.inner.commit(batch)
        }
        fn sync(&self) -> Result<(), BackendError> {
            self.inner.sync()
        }
        fn size_on_disk(&self) -> Result<u64, BackendError> {
            self.inner.size_on_disk()
        }
        fn compact(&self, tree: Tree) -> Result<(), BackendError> {
            self.inner.compact(tree)
        }
    }

    /// Removing many large values at once makes a batch of a few ops per value, and their
    /// pieces go in batches of at most [`SWEEP_OPS`]; pieces an interrupted sweep left go at
    /// the next open.
    #[test]
    fn pieces_go_in_bounded_batches_and_an_open_finishes_what_a_crash_left() {
        let dir = tempfile::tempdir().unwrap();
        let batches = Arc::new(std::sync::Mutex::new(Vec::new()));
        let open = || {
            let inner = Sizes {
                inner: FjallBackend::open(dir.path()).unwrap(),
                batches: batches.clone(),
            };
            Chunked::new(inner).unwrap()
        };
        let backend = open();
        let values = 40u64;
        let mut batch = Batch::new();
        for i in 0..values {
            batch.put(
                Tree::Log,
                i.to_be_bytes().to_vec(),
                value(5 * CHUNK, i as u8),
            );
        }
        backend.commit(batch).unwrap();
        assert_eq!(count(&backend, Tree::Chunks), 200);
        batches.lock().unwrap().clear();
        let mut batch = Batch::new();
        for i in 0..values {
            batch.remove(Tree::Log, i.to_be_bytes().to_vec());
        }
        backend.commit(batch).unwrap();
        let sizes = batches.lock().unwrap().clone();
        // The removal: per value, the marker, the owner entry and a garbage entry.
        assert_eq!(sizes[0], 3 * values as usize, "{sizes:?}");
        // Then 200 pieces and 40 garbage entries, in batches of at most SWEEP_OPS removals.
        assert!(sizes[1..].len() >= 2, "{sizes:?}");
        assert!(
            sizes[1..].iter().all(|&n| n <= SWEEP_OPS + values as usize),
            "{sizes:?}"
        );
        assert_eq!(count(&backend, Tree::Chunks), 0);
        assert_eq!(count(&backend, Tree::Meta), 0);

        // A crash after the removal, before any sweep: what the first batch left.
        put(&backend, Tree::Records, b"k", value(3 * CHUNK, 1));
        drop(backend);
        let inner = FjallBackend::open(dir.path()).unwrap();
        let marker = inner.get(Tree::Records, b"k").unwrap().unwrap();
        let pieces = Pieces::of_value(&marker).unwrap().unwrap();
        let mut batch = Batch::new();
        batch.remove(Tree::Records, b"k".to_vec());
        pieces.discard(&mut batch);
        inner.commit(batch).unwrap();
        assert_eq!(count(&inner, Tree::Chunks), 3);
        drop(inner);
        let backend = open();
        assert_eq!(count(&backend, Tree::Chunks), 0);
        assert_eq!(count(&backend, Tree::Meta), 0);
        // Ids are not handed out again while their pieces may exist.
        put(&backend, Tree::Records, b"k", value(3 * CHUNK, 2));
        let marker = backend.inner.get(Tree::Records, b"k").unwrap().unwrap();
        assert!(Pieces::of_value(&marker).unwrap().unwrap().id > pieces.id);
    }

    /// A head read of a large value, alone or in a scan, reads its first piece, not the whole
    /// value; a scan of keys only reads none of its pieces.
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
            let scan = |len| {
                backend
                    .range_heads(Tree::Records, Bound::Unbounded, Bound::Unbounded, len)
                    .map(Result::unwrap)
                    .collect::<Vec<_>>()
            };
            let key = |k: &'static [u8]| Bytes::from_static(k);
            assert_eq!(
                scan(21),
                [
                    (key(b"large"), large.slice(..CHUNK)),
                    (key(b"small"), value(100, 2))
                ],
                "{engine}"
            );
            assert_eq!(
                scan(0),
                [
                    (key(b"large"), Bytes::new()),
                    (key(b"small"), value(100, 2))
                ],
                "{engine}"
            );
            // A head longer than a piece is the whole value.
            assert_eq!(scan(CHUNK + 1)[0].1, large, "{engine}");
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
