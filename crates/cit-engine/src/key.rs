//! Run and vehicle ids as map keys, stored inline (up to 24 bytes, ids longer than that spill to
//! the heap): looking a run up on every fix then compares the id inside the table's own cache
//! line instead of following a `String` to its heap buffer, a cache miss per fix per map.

use std::borrow::Borrow;

use smallvec::SmallVec;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Key(SmallVec<[u8; 24]>);

impl From<&str> for Key {
    fn from(id: &str) -> Self {
        Key(SmallVec::from_slice(id.as_bytes()))
    }
}

impl Key {
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The id as given (keys are made only from `&str`).
    pub(crate) fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// Lookups take `id.as_bytes()`; a `Key` hashes exactly as its bytes do.
impl Borrow<[u8]> for Key {
    fn borrow(&self) -> &[u8] {
        &self.0
    }
}

impl serde::Serialize for Key {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Keys are made only from `&str`.
        s.serialize_str(&String::from_utf8_lossy(&self.0))
    }
}

impl<'de> serde::Deserialize<'de> for Key {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let id = String::deserialize(d)?;
        Ok(Key::from(id.as_str()))
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
