//! Registered police checkpoints (and any circular zone) covered by `h3o` cells: a cell -> zones
//! map gives O(1) candidates for a position, then an exact haversine test decides.

use std::collections::HashMap;

use cit_domain::{Checkpoint, LatLon, Millis};
use h3o::{CellIndex, LatLng, Resolution};

use crate::frame::haversine_m;

/// Cells of about 174 m edge: a checkpoint of 150 m plus margin covers a few dozen cells.
const RESOLUTION: Resolution = Resolution::Nine;
/// Extra reach every zone is indexed with, so "within radius + 50 m" queries find it.
pub const INDEX_MARGIN_M: f64 = 50.0;

/// Snapshots hold the zones; the cell map is rebuilt from them on load.
#[derive(Debug, Default)]
pub struct ZoneIndex {
    zones: Vec<Checkpoint>,
    by_id: HashMap<String, usize>,
    cells: HashMap<CellIndex, Vec<u32>>,
}

impl serde::Serialize for ZoneIndex {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serde::Serialize::serialize(&self.zones, s)
    }
}

impl<'de> serde::Deserialize<'de> for ZoneIndex {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let zones = <Vec<Checkpoint> as serde::Deserialize>::deserialize(d)?;
        let mut index = ZoneIndex::default();
        for z in zones {
            index.insert(z);
        }
        Ok(index)
    }
}

fn cell_of(p: LatLon) -> Option<CellIndex> {
    LatLng::new(p.lat, p.lon)
        .ok()
        .map(|ll| ll.to_cell(RESOLUTION))
}

impl ZoneIndex {
    pub fn len(&self) -> usize {
        self.zones.len()
    }

    pub fn is_empty(&self) -> bool {
        self.zones.is_empty()
    }

    /// Adds (or replaces, by id) a zone.
    pub fn insert(&mut self, cp: Checkpoint) {
        let Some(center) = cell_of(cp.position) else {
            return;
        };
        let idx = match self.by_id.get(&cp.checkpoint_id) {
            Some(&i) => {
                self.zones[i] = cp.clone();
                i
            }
            None => {
                self.zones.push(cp.clone());
                self.by_id
                    .insert(cp.checkpoint_id.clone(), self.zones.len() - 1);
                self.zones.len() - 1
            }
        };
        // Any point within `reach` of the centre lies in a cell within grid distance k: adjacent
        // cell centres are about 1.5 edge lengths apart at worst (cells shrink toward
        // pentagons), so this k is conservative.
        let reach = cp.radius_m + INDEX_MARGIN_M;
        let k = (reach / (0.75 * RESOLUTION.edge_length_m())).ceil() as u32 + 1;
        for cell in center.grid_disk::<Vec<_>>(k) {
            let list = self.cells.entry(cell).or_default();
            if !list.contains(&(idx as u32)) {
                list.push(idx as u32);
            }
        }
    }

    /// Zones whose circle grown by `margin_m` (at most [`INDEX_MARGIN_M`]) contains `p` and whose
    /// window intersects `[from, to]`.
    pub fn containing(
        &self,
        p: LatLon,
        margin_m: f64,
        from: Millis,
        to: Millis,
    ) -> impl Iterator<Item = &Checkpoint> {
        let list = cell_of(p).and_then(|c| self.cells.get(&c));
        list.into_iter().flatten().filter_map(move |&i| {
            let z = &self.zones[i as usize];
            let inside = haversine_m(p, z.position) <= z.radius_m + margin_m;
            let in_window = z.valid_from <= to && from <= z.valid_to;
            (inside && in_window).then_some(z)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cp(id: &str, lat: f64, lon: f64, r: f64) -> Checkpoint {
        Checkpoint {
            checkpoint_id: id.into(),
            position: LatLon { lat, lon },
            radius_m: r,
            valid_from: Millis(1_000),
            valid_to: Millis(2_000),
        }
    }

    #[test]
    fn finds_zones_by_cell_then_exact_distance_and_window() {
        let mut z = ZoneIndex::default();
        z.insert(cp("PC-1", 57.7144718, 11.9143614, 120.0));
        // ~150 m east: outside 120 m, inside 120 + 50 m.
        let p = LatLon {
            lat: 57.7144718,
            lon: 11.9143614 + 150.0 / (111_195.0 * 57.7144718f64.to_radians().cos()),
        };
        assert_eq!(
            z.containing(p, 0.0, Millis(1_500), Millis(1_500)).count(),
            0
        );
        assert_eq!(
            z.containing(p, 50.0, Millis(1_500), Millis(1_500)).count(),
            1
        );
        // Outside the window.
        assert_eq!(
            z.containing(p, 50.0, Millis(2_001), Millis(3_000)).count(),
            0
        );
        // A window that overlaps.
        assert_eq!(z.containing(p, 50.0, Millis(0), Millis(1_000)).count(), 1);
    }
}
