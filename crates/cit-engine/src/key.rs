//! Run and vehicle ids as map keys, stored inline (up to 24 bytes, ids longer than that spill to
//! the heap): looking a run up on every fix then compares the id inside the table's own cache
//! line instead of following a `String` to its heap buffer, a cache miss per fix per map.

use std::borrow::Borrow;
use std::hash::{Hash, Hasher};

use compact_str::CompactString;

/// 24 bytes, the id inline when it fits (ids of up to 24 bytes); it is in every run's state, in
/// both the run and the last-fix tables and in every queue entry, so its size is paid four times
/// a vehicle (a `SmallVec<[u8; 24]>` was 40 bytes).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub(crate) struct Key(CompactString);

impl From<&str> for Key {
    fn from(id: &str) -> Self {
        Key(CompactString::new(id))
    }
}

impl Key {
    pub(crate) fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    pub(crate) fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

/// Lookups take `id.as_bytes()`; a `Key` hashes exactly as its bytes do.
impl Hash for Key {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.as_bytes().hash(h);
    }
}

impl Borrow<[u8]> for Key {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use foldhash::HashMap;

    #[test]
    fn short_and_long_ids_are_found_by_their_bytes() {
        let long = "R-".repeat(40);
        let mut m = HashMap::default();
        m.insert(Key::from("R-1"), 1);
        m.insert(Key::from(long.as_str()), 2);
        assert_eq!(m.get("R-1".as_bytes()), Some(&1));
        assert_eq!(m.get(long.as_bytes()), Some(&2));
        assert_eq!(m.get("R-2".as_bytes()), None);
    }
}
