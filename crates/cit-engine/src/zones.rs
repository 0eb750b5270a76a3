//! Registered police checkpoints (and any circular zone) covered by `h3o` cells: a cell -> zones
//! map gives O(1) candidates for a position, then an exact haversine test decides.

use foldhash::HashMap;

use cit_domain::{Checkpoint, LatLon, Millis};
use h3o::{CellIndex, LatLng, Resolution};

use crate::frame::haversine_m;

/// Cells of about 66 m edge: a checkpoint of 150 m plus margin covers a few dozen cells, and a
/// cell lists only the zones that reach into it, so a fix meets few false candidates even where
/// checkpoints are dense.
const RESOLUTION: Resolution = Resolution::Ten;
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
            // Only cells the grown circle reaches: every point of a cell lies within its
            // circumradius (farthest vertex) of its centre. (1 m of slack: h3o and our haversine
            // need not use the same earth radius.)
            let middle = LatLng::from(cell);
            let circumradius = cell
                .boundary()
                .iter()
                .map(|v| middle.distance_m(*v))
                .fold(0.0, f64::max);
            let apart = haversine_m(
                cp.position,
                LatLon {
                    lat: middle.lat(),
                    lon: middle.lng(),
                },
            );
            if apart > reach + circumradius + 1.0 {
                continue;
            }
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

    #[test]
    fn cells_list_every_zone_that_reaches_them_and_no_far_ones() {
        // Dense zones of several radii, probed on a fine grid, against measuring every zone.
        let mut z = ZoneIndex::default();
        let zones: Vec<Checkpoint> = (0..60)
            .map(|i| {
                let (row, col) = ((i / 10) as f64, (i % 10) as f64);
                let lat = 57.70 + row * 0.0011 + (i % 3) as f64 * 0.0002;
                let lon = 11.97 + col * 0.0019;
                cp(&format!("PC-{i}"), lat, lon, 20.0 + (i % 7) as f64 * 25.0)
            })
            .collect();
        for c in &zones {
            z.insert(c.clone());
        }
        let (mut candidates, mut hits) = (0, 0);
        for a in 0..120 {
            for b in 0..120 {
                let p = LatLon {
                    lat: 57.6995 + a as f64 * 0.000_06,
                    lon: 11.9695 + b as f64 * 0.000_17,
                };
                for margin in [0.0, INDEX_MARGIN_M] {
                    let mut found: Vec<&str> = z
                        .containing(p, margin, Millis(1_500), Millis(1_500))
                        .map(|c| c.checkpoint_id.as_str())
                        .collect();
                    let mut expected: Vec<&str> = zones
                        .iter()
                        .filter(|c| haversine_m(p, c.position) <= c.radius_m + margin)
                        .map(|c| c.checkpoint_id.as_str())
                        .collect();
                    found.sort_unstable();
                    expected.sort_unstable();
                    if margin > 0.0 {
                        hits += expected.len();
                    }
                    assert_eq!(found, expected, "{p:?} margin {margin}");
                }
                candidates += cell_of(p).and_then(|c| z.cells.get(&c)).map_or(0, Vec::len);
            }
        }
        // A cell lists the zones that reach into it, not the whole neighbourhood: few false
        // candidates for each true one.
        let ratio = candidates as f64 / hits as f64;
        assert!(
            ratio < 2.5,
            "{candidates} candidates for {hits} zones within reach"
        );
    }
}
