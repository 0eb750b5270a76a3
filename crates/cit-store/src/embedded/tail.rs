//! The newest entries of the stream index, held in memory and written to `stream_index` in bulk.
//!
//! Why: citd appends every active run's fixes to the run's own stream, so a group commit touches
//! thousands of streams, and each stream's newest entries sit in a B-tree leaf of their own.
//! Written per commit, every event dirtied one leaf, which redb read, copied, checksummed and
//! wrote again at each commit: with 10,000 streams the store fell from 62k to 30k events/s as
//! the streams grew, and to 120k+ without the index (BENCHMARKS.md). The log (`events`) is the
//! truth and the index is derived from it, so its newest part lives here and is written in
//! bulk, each stream's leaf dirtied once for many entries. The tail is split into [`BUCKETS`]
//! by stream: once it holds [`super::Options::index_flush_events`] entries, its fullest bucket
//! is written out, a few dozen streams with each group commit (the writer's `Flush`), so no
//! commit carries a whole bucket. Each bucket has its own mark, committed with the bucket's last
//! chunk; only then does the tail let go of the entries up to it. After a crash the tail is
//! rebuilt from the log after the lowest mark, each stream's entries after its own.
//!
//! Readers take the tail's lock before they begin their read transaction and hold it while they
//! copy what they need, and the writer updates the tail only after a commit, under the write
//! lock: so a reader sees every acknowledged event either in its transaction's `stream_index`
//! or in the tail (in both while a bucket is being written out; the tail's copy is then taken).

use std::collections::HashMap;

use crate::chain::Hash;

/// The position of a version whose record is missing (positions count from 1).
const MISSING: u64 = 0;

/// One stream's entries not yet in `stream_index`: versions `first..first + positions.len()`.
/// Position 0 (never a record's) marks a version whose record is missing from the log.
#[derive(Debug, Clone)]
pub struct StreamTail {
    pub first: u64,
    pub positions: Vec<u64>,
    /// The chain hash of the newest entry (where the next append's chain starts).
    pub chain: Hash,
}

impl StreamTail {
    pub fn new(first: u64) -> Self {
        StreamTail {
            first,
            positions: Vec::new(),
            chain: crate::chain::GENESIS,
        }
    }

    /// The newest entry's version and position.
    pub fn head(&self) -> Option<(u64, u64)> {
        let last = *self.positions.last()?;
        Some((self.first + self.positions.len() as u64 - 1, last))
    }

    pub fn position_of(&self, version: u64) -> Option<u64> {
        let i = usize::try_from(version.checked_sub(self.first)?).ok()?;
        self.positions.get(i).copied().filter(|p| *p != MISSING)
    }

    /// Versions from `from` on, forwards: (version, position).
    pub fn forwards(&self, from: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
        let skip = from.saturating_sub(self.first) as usize;
        (self.first..)
            .zip(self.positions.iter().copied())
            .skip(skip)
            .filter(|e| e.1 != MISSING)
    }

    /// Versions up to `from`, backwards: (version, position).
    pub fn backwards(&self, from: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
        let first = self.first;
        self.positions
            .iter()
            .enumerate()
            .rev()
            .map(move |(i, p)| (first + i as u64, *p))
            .skip_while(move |(v, _)| *v > from)
            .filter(|e| e.1 != MISSING)
    }

    pub fn push(&mut self, version: u64, position: u64, chain: Hash) {
        debug_assert_eq!(version, self.first + self.positions.len() as u64);
        self.positions.push(position);
        self.chain = chain;
    }

    /// The entries that follow this stream's last ones, and the chain's new head.
    pub fn extend(&mut self, positions: Vec<u64>, chain: Hash) {
        self.positions.extend(positions);
        self.chain = chain;
    }
}

/// How many buckets the tail is split into, by a stable hash of the stream name. One bucket is
/// written out at a time, the fullest, and since 2026-12-06 over several group commits (the
/// writer's `Flush`). Chosen when a bucket went in one group: at 10,000 streams one of 32 held
/// the writer ~23 ms where the whole tail held it 195-235 ms; fewer buckets cost latency (16:
/// 32 ms), more cost throughput (64: 12% fewer events/s, 32: 4%; BENCHMARKS.md). Each bucket's
/// mark is stored: a store opened with another count starts every bucket from the lowest mark
/// it finds, which only writes some entries again.
pub const BUCKETS: usize = 32;

/// The bucket of a stream: FNV-1a, stable across builds and platforms because the marks it
/// keys are stored.
pub fn bucket_of(stream: &str) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in stream.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % BUCKETS as u64) as usize
}

/// Every stream's entries after its bucket's mark.
#[derive(Debug)]
pub struct Tail {
    /// Per bucket: every event at or before this position, of a stream in the bucket, has its
    /// entry in `stream_index`.
    marks: [u64; BUCKETS],
    buckets: Vec<Bucket>,
}

#[derive(Debug, Default)]
struct Bucket {
    streams: HashMap<String, StreamTail>,
    len: usize,
}

impl Tail {
    pub fn new(marks: [u64; BUCKETS]) -> Self {
        Tail {
            marks,
            buckets: (0..BUCKETS).map(|_| Bucket::default()).collect(),
        }
    }

    /// Every event at or before this position of `stream` is in `stream_index`.
    pub fn mark_of(&self, stream: &str) -> u64 {
        self.marks[bucket_of(stream)]
    }

    pub fn get(&self, stream: &str) -> Option<&StreamTail> {
        self.buckets[bucket_of(stream)].streams.get(stream)
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.buckets.iter().map(|b| b.len).sum()
    }

    /// Adds one entry (the log read again after a restart). A record edited on disk may not
    /// follow its stream: one that skips versions is taken and the versions between are marked
    /// missing (so reading the stream shows the gap); one at or before the stream's last
    /// version is refused (false).
    pub fn push(&mut self, stream: &str, version: u64, position: u64, chain: Hash) -> bool {
        let bucket = &mut self.buckets[bucket_of(stream)];
        let s = match bucket.streams.get_mut(stream) {
            Some(s) => s,
            None => bucket
                .streams
                .entry(stream.to_string())
                .or_insert_with(|| StreamTail::new(version)),
        };
        let next = s.first + s.positions.len() as u64;
        if version < next {
            return false;
        }
        let gap = (version - next) as usize;
        s.positions.resize(s.positions.len() + gap, MISSING);
        s.push(version, position, chain);
        bucket.len += 1 + gap;
        true
    }

    /// Adds the entries a committed group staged.
    pub fn extend(&mut self, staged: HashMap<String, StreamTail>) {
        for (stream, new) in staged {
            let bucket = &mut self.buckets[bucket_of(&stream)];
            bucket.len += new.positions.len();
            match bucket.streams.get_mut(&stream) {
                Some(s) => {
                    debug_assert_eq!(new.first, s.first + s.positions.len() as u64);
                    s.extend(new.positions, new.chain);
                }
                None => {
                    bucket.streams.insert(stream, new);
                }
            }
        }
    }

    /// The bucket holding the most entries, and how many (None when the tail is empty).
    pub fn fullest(&self) -> Option<(usize, usize)> {
        (0..BUCKETS)
            .map(|b| (b, self.buckets[b].len))
            .filter(|(_, len)| *len > 0)
            .max_by_key(|(_, len)| *len)
    }

    /// A bucket's streams, in key order (the order `stream_index` sorts them).
    pub fn streams(&self, bucket: usize) -> Vec<String> {
        let mut names: Vec<String> = self.buckets[bucket].streams.keys().cloned().collect();
        names.sort_unstable();
        names
    }

    /// A stream's entries at or before position `mark`: (version, position).
    pub fn entries_until(&self, stream: &str, mark: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.get(stream)
            .into_iter()
            .flat_map(|s| s.forwards(0))
            .take_while(move |(_, p)| *p <= mark)
    }

    /// Forgets a bucket's entries at or before `mark`: they are in `stream_index` now. Entries
    /// after it (appended while the bucket was written out) stay.
    pub fn trim(&mut self, bucket: usize, mark: u64) {
        let b = &mut self.buckets[bucket];
        b.streams.retain(|_, s| {
            // Positions grow along a stream; a missing version (position 0) before a kept one
            // goes with those before it, as `stream_index` has no entry for it either.
            let written = s
                .positions
                .iter()
                .position(|p| *p > mark)
                .unwrap_or(s.positions.len());
            s.positions.drain(..written);
            s.first += written as u64;
            b.len -= written;
            !s.positions.is_empty()
        });
        self.marks[bucket] = mark;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_tail_reads_forwards_and_backwards_from_a_version() {
        let mut t = Tail::new([0; BUCKETS]);
        for (v, p) in [(5, 50), (6, 61), (7, 72)] {
            assert!(t.push("s", v, p, [v as u8; 32]));
        }
        assert!(!t.push("s", 6, 90, [9; 32]), "a repeat is refused");
        let s = t.get("s").expect("s");
        assert_eq!(s.head(), Some((7, 72)));
        assert_eq!(s.chain, [7; 32]);
        assert_eq!(s.position_of(6), Some(61));
        assert_eq!(s.position_of(4), None);
        assert_eq!(s.position_of(8), None);
        assert_eq!(s.forwards(6).collect::<Vec<_>>(), [(6, 61), (7, 72)]);
        assert_eq!(s.forwards(0).count(), 3);
        assert_eq!(s.backwards(6).collect::<Vec<_>>(), [(6, 61), (5, 50)]);
        assert_eq!(s.backwards(100).count(), 3);
        assert_eq!(s.backwards(4).count(), 0);
        let mut staged = HashMap::new();
        let mut more = StreamTail::new(8);
        more.push(8, 80, [8; 32]);
        staged.insert("s".to_string(), more);
        t.extend(staged);
        assert_eq!(t.len(), 4);
        assert!(t.push("s", 10, 100, [10; 32]), "a gap is marked");
        let s = t.get("s").expect("s");
        assert_eq!(s.position_of(9), None);
        assert_eq!(
            s.forwards(7).collect::<Vec<_>>(),
            [(7, 72), (8, 80), (10, 100)]
        );
        assert_eq!(
            s.backwards(10).take(2).collect::<Vec<_>>(),
            [(10, 100), (8, 80)]
        );
    }

    #[test]
    fn buckets_are_written_out_fullest_first_and_one_at_a_time() {
        // Two streams in different buckets (the hash is fixed, so this pair is too).
        let (a, b) = ("vehicle-1", "vehicle-2");
        assert_ne!(bucket_of(a), bucket_of(b));
        let mut t = Tail::new([0; BUCKETS]);
        for v in 0..3 {
            assert!(t.push(a, v, 10 + v, [0; 32]));
        }
        assert!(t.push(b, 0, 20, [0; 32]));
        assert_eq!(t.len(), 4);
        assert_eq!(t.fullest(), Some((bucket_of(a), 3)));
        assert_eq!(t.streams(bucket_of(a)), [a]);
        assert_eq!(
            t.entries_until(a, 20).collect::<Vec<_>>(),
            [(0, 10), (1, 11), (2, 12)]
        );
        assert_eq!(t.entries_until(a, 11).count(), 2);
        t.trim(bucket_of(a), 20);
        assert_eq!((t.len(), t.mark_of(a), t.mark_of(b)), (1, 20, 0));
        assert!(t.get(a).is_none());
        assert_eq!(t.get(b).and_then(|s| s.head()), Some((0, 20)));
        assert_eq!(t.fullest(), Some((bucket_of(b), 1)));
        t.trim(bucket_of(b), 21);
        assert_eq!((t.len(), t.fullest()), (0, None));
    }

    #[test]
    fn a_trim_keeps_what_came_after_the_mark() {
        // A bucket written out up to 12 while the stream went on: versions after it stay, and
        // a version missing before the mark goes with the written ones.
        let mut t = Tail::new([0; BUCKETS]);
        assert!(t.push("s", 0, 10, [0; 32]));
        assert!(t.push("s", 2, 12, [2; 32]), "version 1 is missing");
        assert!(t.push("s", 3, 30, [3; 32]));
        assert!(t.push("s", 4, 31, [4; 32]));
        assert_eq!(
            t.entries_until("s", 12).collect::<Vec<_>>(),
            [(0, 10), (2, 12)]
        );
        t.trim(bucket_of("s"), 12);
        let s = t.get("s").expect("s keeps its newer versions");
        assert_eq!(s.forwards(0).collect::<Vec<_>>(), [(3, 30), (4, 31)]);
        assert_eq!((s.first, s.head(), s.chain), (3, Some((4, 31)), [4; 32]));
        assert_eq!((t.len(), t.mark_of("s")), (2, 12));
    }

    #[test]
    fn the_bucket_hash_is_stable() {
        // Stored marks are keyed by it: a change here is a format change.
        const PINNED: usize = 27;
        assert_eq!(
            bucket_of(""),
            (0xcbf2_9ce4_8422_2325u64 % BUCKETS as u64) as usize
        );
        assert_eq!(bucket_of("run-R-1"), PINNED);
        let spread: std::collections::HashSet<usize> = (0..1000)
            .map(|i| bucket_of(&format!("vehicle-{i}")))
            .collect();
        assert_eq!(
            spread.len(),
            BUCKETS,
            "a thousand streams reach every bucket"
        );
    }
}
