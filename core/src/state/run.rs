//! Sorted runs: how a checkpoint's changes of one key group are laid out.
//!
//! A run holds, for one state and one key group, the entries one write produced, sorted by
//! key bytes and cut into chunks of about [`CHUNK_BYTES`]. The chunks are written one after
//! the other into a run file (see [`files`](super::files)); the run's manifest entry in sled
//! lists each chunk's place in the file and last key (a [`ChunkIndex`]), so the chunk that
//! may hold a key is found in memory and read with one `pread`. A chunk is
//!
//! ```text
//! count (u32) | count offsets (u32, from the chunk's start) | entries
//! entry = key length (u32) | key | value length (u32) | value
//! ```
//!
//! all big-endian; the offsets let a lookup binary-search the chunk without decoding it, and
//! a value is handed out as a slice of the chunk, not a copy.
//!
//! A run of one small chunk (at most [`PACKED_RUN_BYTES`]) has no manifest entry of its own
//! but is a member of a *pack* with the small runs of other key groups of the same write
//! (see [`Place`]): a checkpoint of few keys writes a handful of manifest entries, not one
//! per key group.

use std::sync::Arc;

use sled::IVec;

/// About how many bytes of entries a chunk holds (at least one entry, whatever its size).
pub(crate) const CHUNK_BYTES: usize = 32 * 1024;

/// Bytes of a run id: state id (u32), inverted epoch (u64), inverted sequence (u32), key
/// group (u16).
///
/// Epoch before key group: the manifest entries of one checkpoint are neighbours in sled,
/// ahead of every older run of the state, so a checkpoint's writes fill fresh leaves of
/// sled's tree instead of rewriting leaves of older runs.
pub(crate) const RUN_ID: usize = 4 + 8 + 4 + 2;

/// One run of one state and key group: the epoch its entries belong to, and a sequence that
/// orders the runs of one epoch (a later write of the same epoch wins).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct RunKey {
    pub(crate) state: u32,
    pub(crate) key_group: u16,
    pub(crate) epoch: u64,
    pub(crate) seq: u32,
}

impl RunKey {
    /// The run's id: its manifest key (see [`RUN_ID`]).
    /// Newer runs sort first (epoch and sequence are stored inverted), in each state and so
    /// in each key group.
    pub(crate) fn id(&self) -> [u8; RUN_ID] {
        let mut id = [0u8; RUN_ID];
        id[..12].copy_from_slice(&epoch_prefix(self.state, self.epoch));
        id[12..16].copy_from_slice(&(!self.seq).to_be_bytes());
        id[16..].copy_from_slice(&self.key_group.to_be_bytes());
        id
    }

    /// The run a run id names.
    pub(crate) fn from_id(id: &[u8]) -> RunKey {
        RunKey {
            state: u32::from_be_bytes(id[..4].try_into().expect("4 bytes")),
            epoch: !u64::from_be_bytes(id[4..12].try_into().expect("8 bytes")),
            seq: !u32::from_be_bytes(id[12..16].try_into().expect("4 bytes")),
            key_group: u16::from_be_bytes(id[16..18].try_into().expect("2 bytes")),
        }
    }
}

/// The prefix of every run of one state and epoch: the ids of a state's runs of epochs
/// `low..=high` lie from `epoch_prefix(state, high)` up to `epoch_prefix(state, low - 1)`.
pub(crate) fn epoch_prefix(state: u32, epoch: u64) -> [u8; 12] {
    let mut prefix = [0u8; 12];
    prefix[..4].copy_from_slice(&state.to_be_bytes());
    prefix[4..].copy_from_slice(&(!epoch).to_be_bytes());
    prefix
}

/// The key group of a pack's id (no real key group: there are far fewer).
pub(crate) const PACK_GROUP: u16 = u16::MAX;

/// A run whose one chunk is at most this many bytes is written into a pack (see [`Place`]).
pub(crate) const PACKED_RUN_BYTES: usize = CHUNK_BYTES / 4;

/// Where a run's chunks are in its file.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Place {
    /// Chunks of its own, listed by their last keys.
    Chunks(Arc<ChunkIndex>),
    /// One chunk of `len` bytes at `offset` of its file, listed in the manifest entry of a
    /// *pack* (named by a run id with key group [`PACK_GROUP`]) with the small runs of the
    /// other key groups that one snapshot wrote.
    ///
    /// A checkpoint of few changed keys has a small run in each of the 128 key groups. Each
    /// with a manifest entry of its own, that was 128 sled inserts, and on this project's
    /// 2-vCPU machine they took several milliseconds of a 12 to 21 ms checkpoint; in packs of
    /// about [`CHUNK_BYTES`] of chunks, a checkpoint of 10,000 changed keys writes about 11
    /// manifest entries.
    Packed { pack: RunKey, offset: u64, len: u32 },
}

impl std::fmt::Debug for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Place::Chunks(index) => write!(f, "Chunks({})", index.len()),
            Place::Packed { pack, offset, len } => f
                .debug_struct("Packed")
                .field("pack", pack)
                .field("offset", offset)
                .field("len", len)
                .finish(),
        }
    }
}

/// The chunks of a run of its own, in key order: where each is in the run's file, and its
/// last key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ChunkIndex {
    /// Per chunk: offset in the file, length, and where its last key ends in `keys`.
    chunks: Vec<(u64, u32, u32)>,
    /// The chunks' last keys, one after the other.
    keys: Vec<u8>,
}

impl ChunkIndex {
    /// Adds the next chunk: `len` bytes at `offset`, whose last key is `last_key`.
    pub(crate) fn push(&mut self, offset: u64, len: u32, last_key: &[u8]) {
        self.keys.extend_from_slice(last_key);
        self.chunks.push((offset, len, self.keys.len() as u32));
    }

    pub(crate) fn len(&self) -> usize {
        self.chunks.len()
    }

    fn last_key(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.chunks[i - 1].2 };
        &self.keys[start as usize..self.chunks[i].2 as usize]
    }

    /// The chunk that holds `key` if the run has it: the first whose last key is at or
    /// after it, as `(offset, len)`.
    pub(crate) fn find(&self, key: &[u8]) -> Option<(u64, u32)> {
        let (mut low, mut high) = (0, self.chunks.len());
        while low < high {
            let mid = low + (high - low) / 2;
            if self.last_key(mid) < key {
                low = mid + 1;
            } else {
                high = mid;
            }
        }
        self.chunks.get(low).map(|&(offset, len, _)| (offset, len))
    }

    /// Every chunk, in key order, as `(offset, len)`.
    pub(crate) fn chunks(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        self.chunks.iter().map(|&(offset, len, _)| (offset, len))
    }

    /// Appends the index: count (u32), then per chunk offset (u64), length (u32), last key
    /// length (u32) and last key.
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&(self.chunks.len() as u32).to_be_bytes());
        for (i, &(offset, len, _)) in self.chunks.iter().enumerate() {
            let key = self.last_key(i);
            out.extend_from_slice(&offset.to_be_bytes());
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(&(key.len() as u32).to_be_bytes());
            out.extend_from_slice(key);
        }
    }

    /// An index read back; `None` unless it is exactly what [`encode`](Self::encode) wrote.
    fn decode(mut bytes: &[u8]) -> Option<Self> {
        let mut take = |n: usize| {
            let (head, rest) = bytes.split_at_checked(n)?;
            bytes = rest;
            Some(head)
        };
        let count = u32::from_be_bytes(take(4)?.try_into().ok()?);
        let mut index = ChunkIndex::default();
        for _ in 0..count {
            let offset = u64::from_be_bytes(take(8)?.try_into().ok()?);
            let len = u32::from_be_bytes(take(4)?.try_into().ok()?);
            let key_len = u32::from_be_bytes(take(4)?.try_into().ok()?);
            index.push(offset, len, take(key_len as usize)?);
        }
        bytes.is_empty().then_some(index)
    }
}

/// What the manifest keeps of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RunMeta {
    pub(crate) key: RunKey,
    /// Entries (values and deletions).
    pub(crate) entries: u64,
    /// Bytes of its chunks.
    pub(crate) bytes: u64,
    /// The run file its chunks are in.
    pub(crate) file: u64,
    pub(crate) place: Place,
}

/// Bytes of one member of a pack's manifest entry: key group (u16), offset (u64), length
/// (u32), entries (u64), bytes (u64).
const PACK_MEMBER: usize = 2 + 8 + 4 + 8 + 8;

impl RunMeta {
    /// The manifest value of a run with chunks of its own: entries (u64), bytes (u64),
    /// file (u64), then its chunk index.
    pub(crate) fn encode_value(&self) -> Vec<u8> {
        let mut value = Vec::new();
        value.extend_from_slice(&self.entries.to_be_bytes());
        value.extend_from_slice(&self.bytes.to_be_bytes());
        value.extend_from_slice(&self.file.to_be_bytes());
        if let Place::Chunks(index) = &self.place {
            index.encode(&mut value);
        }
        value
    }

    /// A manifest entry read back: one run, or the members of a pack (in the order they
    /// were written); `None` when it is not one omstream wrote.
    pub(crate) fn decode(id: &[u8], value: &[u8]) -> Option<Vec<RunMeta>> {
        if id.len() != RUN_ID {
            return None;
        }
        let key = RunKey::from_id(id);
        let u32_at = |m: &[u8], at: usize| Some(u32::from_be_bytes(m[at..at + 4].try_into().ok()?));
        let u64_at =
            |m: &[u8], at: usize| Some(u64::from_be_bytes(m.get(at..at + 8)?.try_into().ok()?));
        if key.key_group != PACK_GROUP {
            return Some(vec![RunMeta {
                key,
                entries: u64_at(value, 0)?,
                bytes: u64_at(value, 8)?,
                file: u64_at(value, 16)?,
                place: Place::Chunks(Arc::new(ChunkIndex::decode(&value[24..])?)),
            }]);
        }
        let file = u64_at(value, 0)?;
        let members = &value[8..];
        if members.is_empty() || !members.len().is_multiple_of(PACK_MEMBER) {
            return None;
        }
        members
            .chunks_exact(PACK_MEMBER)
            .map(|m| {
                let key_group = u16::from_be_bytes(m[..2].try_into().ok()?);
                (key_group != PACK_GROUP).then_some(())?;
                Some(RunMeta {
                    key: RunKey { key_group, ..key },
                    entries: u64_at(m, 14)?,
                    bytes: u64_at(m, 22)?,
                    file,
                    place: Place::Packed {
                        pack: key,
                        offset: u64_at(m, 2)?,
                        len: u32_at(m, 10)?,
                    },
                })
            })
            .collect()
    }

    /// The manifest value of a pack in `file` whose (remaining) members are `members`.
    pub(crate) fn encode_pack<'a>(
        file: u64,
        members: impl IntoIterator<Item = &'a RunMeta>,
    ) -> Vec<u8> {
        let mut value = file.to_be_bytes().to_vec();
        for member in members {
            let Place::Packed { offset, len, .. } = member.place else {
                continue;
            };
            value.extend_from_slice(&member.key.key_group.to_be_bytes());
            value.extend_from_slice(&offset.to_be_bytes());
            value.extend_from_slice(&len.to_be_bytes());
            value.extend_from_slice(&member.entries.to_be_bytes());
            value.extend_from_slice(&member.bytes.to_be_bytes());
        }
        value
    }

    /// The pack this run is in, if it is in one.
    pub(crate) fn pack(&self) -> Option<RunKey> {
        match self.place {
            Place::Packed { pack, .. } => Some(pack),
            Place::Chunks(_) => None,
        }
    }
}

/// A snapshot's changes of one key group, encoded into one buffer (no allocation per entry):
/// appended in any order, sorted by key when written.
#[derive(Debug, Default)]
pub(crate) struct GroupChanges {
    bytes: Vec<u8>,
    /// Per entry: its key's first 8 bytes as a big-endian number (zero-padded), where its
    /// key starts, the key's length, the value's length (the value follows the key).
    entries: Vec<(u64, u32, u32, u32)>,
}

/// A key's first 8 bytes (zero-padded) as a big-endian number: keys whose prefixes differ
/// compare as their prefixes do, so sorting compares numbers and only reads the key bytes of
/// equal prefixes (sorting a million keys: a fifth of the time of comparing slices).
#[inline]
fn prefix_of(key: &[u8]) -> u64 {
    let mut prefix = [0u8; 8];
    let n = key.len().min(8);
    prefix[..n].copy_from_slice(&key[..n]);
    u64::from_be_bytes(prefix)
}

impl GroupChanges {
    /// Appends an entry: `encode_key` and `encode_value` write their bytes to the buffer
    /// they are given (a value that writes nothing is a deletion).
    pub(crate) fn push<E>(
        &mut self,
        encode_key: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
        encode_value: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
    ) -> Result<(), E> {
        let start = self.bytes.len();
        let undo = |bytes: &mut Vec<u8>| bytes.truncate(start);
        if let Err(e) = encode_key(&mut self.bytes) {
            undo(&mut self.bytes);
            return Err(e);
        }
        let key_end = self.bytes.len();
        if let Err(e) = encode_value(&mut self.bytes) {
            undo(&mut self.bytes);
            return Err(e);
        }
        self.entries.push((
            prefix_of(&self.bytes[start..key_end]),
            start as u32,
            (key_end - start) as u32,
            (self.bytes.len() - key_end) as u32,
        ));
        Ok(())
    }

    /// Empties the buffers, keeping their memory for the next snapshot.
    pub(crate) fn clear(&mut self) {
        self.bytes.clear();
        self.entries.clear();
    }

    /// The bytes the buffers hold on to.
    pub(crate) fn capacity(&self) -> usize {
        self.bytes.capacity()
            + self.entries.capacity() * std::mem::size_of::<(u64, u32, u32, u32)>()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entries gathered.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// The size of the one chunk these entries would make (see [`ChunkBuilder`]).
    pub(crate) fn chunk_len(&self) -> usize {
        4 + 12 * self.entries.len() + self.bytes.len()
    }

    /// The entries as `(key, value)`, sorted by key.
    pub(crate) fn sorted(&mut self) -> impl Iterator<Item = (&[u8], &[u8])> {
        let bytes = &self.bytes;
        let key = |&(_, start, key_len, _): &(u64, u32, u32, u32)| {
            &bytes[start as usize..(start + key_len) as usize]
        };
        self.entries
            .sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| key(a).cmp(key(b))));
        self.entries
            .iter()
            .map(move |&(_, start, key_len, value_len)| {
                let (start, key_end) = (start as usize, (start + key_len) as usize);
                (
                    &bytes[start..key_end],
                    &bytes[key_end..key_end + value_len as usize],
                )
            })
    }
}

/// Cuts sorted entries into chunks.
pub(crate) struct ChunkBuilder {
    offsets: Vec<u32>,
    body: Vec<u8>,
}

impl ChunkBuilder {
    pub(crate) fn new() -> Self {
        ChunkBuilder {
            offsets: Vec::new(),
            body: Vec::with_capacity(CHUNK_BYTES + 1024),
        }
    }

    /// Adds an entry (keys come in increasing order).
    pub(crate) fn push(&mut self, key: &[u8], value: &[u8]) {
        self.offsets.push(self.body.len() as u32);
        self.body
            .extend_from_slice(&(key.len() as u32).to_be_bytes());
        self.body.extend_from_slice(key);
        self.body
            .extend_from_slice(&(value.len() as u32).to_be_bytes());
        self.body.extend_from_slice(value);
    }

    /// Whether the chunk is full enough to be written.
    pub(crate) fn is_full(&self) -> bool {
        self.body.len() >= CHUNK_BYTES
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }

    /// The chunk's bytes; the builder is empty again.
    pub(crate) fn finish(&mut self) -> Vec<u8> {
        let header = 4 + 4 * self.offsets.len();
        let mut chunk = Vec::with_capacity(header + self.body.len());
        chunk.extend_from_slice(&(self.offsets.len() as u32).to_be_bytes());
        for offset in &self.offsets {
            chunk.extend_from_slice(&(offset + header as u32).to_be_bytes());
        }
        chunk.extend_from_slice(&self.body);
        self.offsets.clear();
        self.body.clear();
        chunk
    }
}

/// A chunk read back, checked on the way in: every offset and length stays inside it.
pub(crate) struct Chunk<'a> {
    bytes: &'a IVec,
    count: usize,
}

impl<'a> Chunk<'a> {
    /// The chunk, or `None` when its header does not fit its size (not what omstream wrote).
    pub(crate) fn parse(bytes: &'a IVec) -> Option<Self> {
        let count = u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
        (bytes.len() >= 4 + 4 * count).then_some(Chunk { bytes, count })
    }

    pub(crate) fn len(&self) -> usize {
        self.count
    }

    fn u32_at(&self, at: usize) -> Option<usize> {
        Some(u32::from_be_bytes(self.bytes.get(at..at + 4)?.try_into().ok()?) as usize)
    }

    /// Entry `i`: the key's range and the value's range in the chunk.
    fn ranges(&self, i: usize) -> Option<(std::ops::Range<usize>, std::ops::Range<usize>)> {
        let start = self.u32_at(4 + 4 * i)?;
        let key_len = self.u32_at(start)?;
        let key = start + 4..start + 4 + key_len;
        let value_len = self.u32_at(key.end)?;
        let value = key.end + 4..key.end + 4 + value_len;
        (value.end <= self.bytes.len()).then_some((key, value))
    }

    /// Entry `i`'s key.
    pub(crate) fn key(&self, i: usize) -> Option<&'a [u8]> {
        let (key, _) = self.ranges(i)?;
        let bytes: &'a [u8] = self.bytes;
        Some(&bytes[key])
    }

    /// Entry `i`'s value, as a slice of the chunk.
    pub(crate) fn value(&self, i: usize) -> Option<IVec> {
        let (_, value) = self.ranges(i)?;
        Some(self.bytes.subslice(value.start, value.len()))
    }

    /// Entry `i`: its key and value, as slices of the chunk.
    pub(crate) fn entry(&self, i: usize) -> Option<(IVec, IVec)> {
        let (key, value) = self.ranges(i)?;
        Some((
            self.bytes.subslice(key.start, key.len()),
            self.bytes.subslice(value.start, value.len()),
        ))
    }

    /// The value stored for `key` (empty: a deletion); `None` when the chunk has no entry
    /// for it. `Err` when the chunk is damaged.
    pub(crate) fn lookup(&self, key: &[u8]) -> Result<Option<IVec>, ()> {
        let (mut low, mut high) = (0, self.count);
        while low < high {
            let mid = low + (high - low) / 2;
            match self.key(mid).ok_or(())?.cmp(key) {
                std::cmp::Ordering::Less => low = mid + 1,
                std::cmp::Ordering::Greater => high = mid,
                std::cmp::Ordering::Equal => return self.value(mid).map(Some).ok_or(()),
            }
        }
        Ok(None)
    }
}

/// An encoder that writes `bytes` (for tests).
#[cfg(test)]
pub(crate) fn put<E>(bytes: &[u8]) -> impl FnOnce(&mut Vec<u8>) -> Result<(), E> + '_ {
    move |out| {
        out.extend_from_slice(bytes);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_entries_of_runs_and_of_packs_read_back() {
        let mut index = ChunkIndex::default();
        index.push(0, 300, b"apple");
        index.push(300, 200, b"melon");
        index.push(500, 100, b"");
        let run = RunMeta {
            key: RunKey {
                state: 2,
                key_group: 7,
                epoch: 9,
                seq: 3,
            },
            entries: 5,
            bytes: 600,
            file: 11,
            place: Place::Chunks(Arc::new(index)),
        };
        let value = run.encode_value();
        assert_eq!(
            RunMeta::decode(&run.key.id(), &value),
            Some(vec![run.clone()])
        );
        let pack = RunKey {
            key_group: PACK_GROUP,
            ..run.key
        };
        let members: Vec<RunMeta> = [(4u16, 0u64, 100u32), (90, 100, 250)]
            .into_iter()
            .map(|(key_group, offset, len)| RunMeta {
                key: RunKey { key_group, ..pack },
                entries: u64::from(len) / 10,
                bytes: u64::from(len),
                file: 12,
                place: Place::Packed { pack, offset, len },
            })
            .collect();
        let packed = RunMeta::encode_pack(12, &members);
        assert_eq!(RunMeta::decode(&pack.id(), &packed), Some(members));
        // Not what omstream writes: truncated entries, an empty pack, a run value under a
        // pack's id, a pack member claiming the pack's own group, trailing bytes.
        assert_eq!(
            RunMeta::decode(&pack.id(), &packed[..packed.len() - 1]),
            None
        );
        assert_eq!(RunMeta::decode(&pack.id(), &packed[..8]), None);
        assert_eq!(RunMeta::decode(&pack.id(), &[]), None);
        assert_eq!(
            RunMeta::decode(&run.key.id(), &value[..value.len() - 1]),
            None
        );
        assert_eq!(RunMeta::decode(&run.key.id(), &value[..20]), None);
        assert_eq!(
            RunMeta::decode(&run.key.id(), &[value.clone(), vec![0]].concat()),
            None
        );
        let mut odd = packed.clone();
        odd[8..10].copy_from_slice(&PACK_GROUP.to_be_bytes());
        assert_eq!(RunMeta::decode(&pack.id(), &odd), None);
    }

    #[test]
    fn the_chunk_index_finds_the_first_chunk_that_may_hold_a_key() {
        let mut index = ChunkIndex::default();
        for (i, last) in [&b"b"[..], b"d", b"dd", b"f"].into_iter().enumerate() {
            index.push(i as u64 * 10, 10, last);
        }
        let find = |key: &[u8]| index.find(key).map(|(offset, _)| offset);
        assert_eq!(find(b""), Some(0));
        assert_eq!(find(b"b"), Some(0));
        assert_eq!(find(b"c"), Some(10));
        assert_eq!(find(b"d"), Some(10));
        assert_eq!(find(b"da"), Some(20));
        assert_eq!(find(b"e"), Some(30));
        assert_eq!(find(b"g"), None, "past the last key");
        assert_eq!(index.chunks().count(), 4);
    }

    #[test]
    fn chunks_round_trip_and_are_searched_by_key() {
        let mut builder = ChunkBuilder::new();
        let keys: Vec<Vec<u8>> = (0u32..100)
            .map(|i| (i * 3).to_be_bytes().to_vec())
            .collect();
        for key in &keys {
            builder.push(key, if key[3] % 2 == 0 { b"even" } else { b"" });
        }
        let chunk = IVec::from(builder.finish());
        assert!(builder.is_empty());
        let parsed = Chunk::parse(&chunk).expect("parses");
        assert_eq!(parsed.len(), 100);
        assert_eq!(parsed.key(7), Some(&keys[7][..]));
        assert_eq!(
            parsed.lookup(&6u32.to_be_bytes()),
            Ok(Some(IVec::from(&b"even"[..])))
        );
        assert_eq!(
            parsed.lookup(&3u32.to_be_bytes()),
            Ok(Some(IVec::from(&b""[..])))
        );
        assert_eq!(parsed.lookup(&4u32.to_be_bytes()), Ok(None));
        assert_eq!(parsed.lookup(&1000u32.to_be_bytes()), Ok(None));
    }

    #[test]
    fn group_changes_come_out_sorted_and_a_failed_encoding_leaves_nothing() {
        let mut changes = GroupChanges::default();
        for key in [b"b", b"c", b"a"] {
            changes.push::<()>(put(key), put(b"v")).unwrap();
        }
        assert_eq!(changes.push(put(b"z"), |_| Err("no")), Err("no"));
        let sorted: Vec<_> = changes.sorted().collect();
        assert_eq!(
            sorted,
            vec![
                (&b"a"[..], &b"v"[..]),
                (&b"b"[..], &b"v"[..]),
                (&b"c"[..], &b"v"[..])
            ]
        );
    }

    proptest::proptest! {
        /// Sorting by prefix first gives the byte order of the keys, including keys shorter
        /// than the prefix and keys that differ only after it or by trailing zero bytes.
        #[test]
        fn group_changes_sort_in_byte_order(
            keys in proptest::collection::btree_set(
                proptest::collection::vec(0u8..3, 0..12), 0..200)
        ) {
            let mut changes = GroupChanges::default();
            // In reverse, so that the sort has work to do.
            for key in keys.iter().rev() {
                changes.push::<()>(put(key), put(b"")).unwrap();
            }
            let sorted: Vec<Vec<u8>> = changes.sorted().map(|(k, _)| k.to_vec()).collect();
            let expected: Vec<Vec<u8>> = keys.into_iter().collect();
            proptest::prop_assert_eq!(sorted, expected);
        }
    }

    #[test]
    fn a_damaged_chunk_is_reported_not_read_past_its_end() {
        let mut builder = ChunkBuilder::new();
        builder.push(b"key", b"value");
        let mut bytes = builder.finish();
        bytes.truncate(bytes.len() - 2);
        let chunk = IVec::from(bytes);
        let parsed = Chunk::parse(&chunk).expect("the header fits");
        assert_eq!(parsed.lookup(b"key"), Err(()));
        assert!(Chunk::parse(&IVec::from(&[0u8, 0, 0, 9][..])).is_none());
    }

    #[test]
    fn run_ids_order_newest_first_and_read_back() {
        let older = RunKey {
            state: 1,
            key_group: 5,
            epoch: 7,
            seq: 9,
        };
        let newer = RunKey {
            epoch: 8,
            seq: 0,
            ..older
        };
        let later_same_epoch = RunKey { seq: 10, ..older };
        assert!(newer.id() < older.id());
        assert!(later_same_epoch.id() < older.id());
        let other_group = RunKey {
            key_group: 4,
            ..later_same_epoch
        };
        assert!(other_group.id() < older.id(), "epoch before key group");
        assert_eq!(RunKey::from_id(&older.id()), older);
        assert_eq!(RunKey::from_id(&other_group.id()), other_group);
        // The ids of epochs 7 and 8 lie between the epoch prefixes of 8 and 6.
        for run in [older, newer, other_group] {
            assert!(epoch_prefix(1, 8)[..] <= run.id()[..]);
            assert!(run.id()[..] < epoch_prefix(1, 6)[..]);
        }
    }
}
