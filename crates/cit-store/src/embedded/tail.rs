//! The newest entries of the stream index, held in memory and written to `stream_index` in bulk.
//!
//! Why: citd appends every active run's fixes to the run's own stream, so a group commit touches
//! thousands of streams, and each stream's newest entries sit in a B-tree leaf of their own.
//! Written per commit, every event dirtied one leaf, which redb read, copied, checksummed and
//! wrote again at each commit: with 10,000 streams the store fell from 62k to 30k events/s as
//! the streams grew, and to 120k+ without the index (BENCHMARKS.md). The log (`events`) is the
//! truth and the index is derived from it, so its newest part lives here and is written once
//! every [`super::Options::index_flush_events`] events, when each stream's leaf is dirtied once
//! for all its new entries. After a crash the tail is rebuilt from the log after the `indexed`
//! mark, which is committed in the same transaction as each bulk write.
//!
//! Readers take the tail's lock before they begin their read transaction and hold it while they
//! copy what they need, and the writer updates the tail only after a commit, under the write
//! lock: so a reader sees every acknowledged event either in its transaction's `stream_index`
//! or in the tail (in both, just after a bulk write; the tail's copy is then taken).

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

/// Every stream's entries after the `indexed` mark.
#[derive(Debug, Default)]
pub struct Tail {
    /// Every event at or before this position has its entry in `stream_index`.
    pub indexed: u64,
    streams: HashMap<String, StreamTail>,
    len: usize,
}

impl Tail {
    pub fn new(indexed: u64) -> Self {
        Tail {
            indexed,
            ..Tail::default()
        }
    }

    pub fn get(&self, stream: &str) -> Option<&StreamTail> {
        self.streams.get(stream)
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Adds one entry (the log read again after a restart). A record edited on disk may not
    /// follow its stream: one that skips versions is taken and the versions between are marked
    /// missing (so reading the stream shows the gap); one at or before the stream's last
    /// version is refused (false).
    pub fn push(&mut self, stream: &str, version: u64, position: u64, chain: Hash) -> bool {
        let s = match self.streams.get_mut(stream) {
            Some(s) => s,
            None => self
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
        self.len += 1 + gap;
        true
    }

    /// Adds the entries a committed group staged.
    pub fn extend(&mut self, staged: HashMap<String, StreamTail>) {
        for (stream, new) in staged {
            self.len += new.positions.len();
            match self.streams.get_mut(&stream) {
                Some(s) => {
                    debug_assert_eq!(new.first, s.first + s.positions.len() as u64);
                    s.extend(new.positions, new.chain);
                }
                None => {
                    self.streams.insert(stream, new);
                }
            }
        }
    }

    /// Every entry, stream by stream in key order (the order `stream_index` sorts them).
    pub fn entries(&self) -> impl Iterator<Item = (&str, u64, u64)> + '_ {
        let mut names: Vec<&String> = self.streams.keys().collect();
        names.sort_unstable();
        names.into_iter().flat_map(move |name| {
            self.streams[name]
                .forwards(0)
                .map(move |(v, p)| (name.as_str(), v, p))
        })
    }

    /// Forgets every entry: they are in `stream_index` up to `indexed` now.
    pub fn clear(&mut self, indexed: u64) {
        self.streams.clear();
        self.len = 0;
        self.indexed = indexed;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_tail_reads_forwards_and_backwards_from_a_version() {
        let mut t = Tail::new(0);
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
        let mut other = StreamTail::new(0);
        other.push(0, 81, [9; 32]);
        staged.insert("a".to_string(), other);
        t.extend(staged);
        assert_eq!(t.len(), 5);
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
        assert_eq!(
            t.entries().collect::<Vec<_>>(),
            [
                ("a", 0, 81),
                ("s", 5, 50),
                ("s", 6, 61),
                ("s", 7, 72),
                ("s", 8, 80),
                ("s", 10, 100)
            ]
        );
        t.clear(100);
        assert_eq!((t.len(), t.indexed), (0, 100));
        assert!(t.get("s").is_none());
    }
}
