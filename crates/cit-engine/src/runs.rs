//! The engine's runs, in a hash table keyed by each run's own id: a slot is one pointer and the
//! id is held once, in the run's state. A map keyed by a copy of the id paid that copy again in
//! every slot of a power-of-two table (about 40 bytes a run at 10,000 runs; BENCHMARKS.md).

use std::hash::BuildHasher;

use foldhash::fast::RandomState;
use hashbrown::HashTable;
use serde::ser::SerializeSeq;

use crate::run::RunState;

#[derive(Default)]
pub(crate) struct Runs {
    table: HashTable<Box<RunState>>,
    /// Hashes an id's bytes; nothing iterates the table in an order that matters.
    hasher: RandomState,
}

impl std::fmt::Debug for Runs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runs").field("len", &self.len()).finish()
    }
}

impl Runs {
    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }

    fn hash(&self, id: &[u8]) -> u64 {
        self.hasher.hash_one(id)
    }

    pub(crate) fn get(&self, id: &[u8]) -> Option<&RunState> {
        self.table
            .find(self.hash(id), |r| r.key.as_bytes() == id)
            .map(|r| &**r)
    }

    pub(crate) fn get_mut(&mut self, id: &[u8]) -> Option<&mut RunState> {
        let hash = self.hash(id);
        self.table
            .find_mut(hash, |r| r.key.as_bytes() == id)
            .map(|r| &mut **r)
    }

    /// Adds the run, replacing one with the same id.
    pub(crate) fn insert(&mut self, run: Box<RunState>) {
        let hash = self.hash(run.key.as_bytes());
        let hasher = &self.hasher;
        match self.table.entry(
            hash,
            |r| r.key == run.key,
            |r| hasher.hash_one(r.key.as_bytes()),
        ) {
            hashbrown::hash_table::Entry::Occupied(mut slot) => *slot.get_mut() = run,
            hashbrown::hash_table::Entry::Vacant(slot) => {
                slot.insert(run);
            }
        }
    }
}

/// As a sequence of runs (each carries its id); the table is rebuilt on load.
impl serde::Serialize for Runs {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.len()))?;
        for run in &self.table {
            seq.serialize_element(&**run)?;
        }
        seq.end()
    }
}

impl<'de> serde::Deserialize<'de> for Runs {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let list = Vec::<Box<RunState>>::deserialize(d)?;
        let mut runs = Runs::default();
        for run in list {
            runs.insert(run);
        }
        Ok(runs)
    }
}

#[cfg(test)]
mod tests {
    use cit_domain::{DetectionParams, LatLon};

    use super::*;

    fn run(id: &str) -> Box<RunState> {
        let route = [
            LatLon {
                lat: 57.7,
                lon: 11.9,
            },
            LatLon {
                lat: 57.71,
                lon: 11.9,
            },
        ];
        Box::new(RunState::new(
            id,
            "V",
            &[],
            &route,
            &[],
            &DetectionParams::default(),
        ))
    }

    #[test]
    fn runs_are_found_by_their_id_replaced_by_it_and_survive_a_snapshot() {
        let long = "R-".repeat(40);
        let mut runs = Runs::default();
        for id in ["R-1", "R-2", long.as_str()] {
            runs.insert(run(id));
        }
        runs.insert(run("R-1"));
        assert_eq!(runs.len(), 3);
        assert!(runs.get(b"R-1").is_some());
        assert!(runs.get_mut(long.as_bytes()).is_some());
        assert!(runs.get(b"R-3").is_none());
        let json = serde_json::to_string(&runs).expect("serialize");
        let back: Runs = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back.len(), 3);
        assert!(back.get(long.as_bytes()).is_some() && back.get(b"R-2").is_some());
    }
}
