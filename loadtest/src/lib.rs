//! Load-test support: a fleet simulator that drives vehicles along the real Gothenburg routes of
//! ../shared/data at road speeds and emits the fixes their telematics units would send, and
//! small reporting helpers shared by the benchmark binaries (our figure, the peer's, the ratio).

use std::path::PathBuf;

/// Where the shared data is when running from a checkout.
pub fn shared_data() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data")
}

/// A route as points in a local metric frame with cumulative distance.
#[derive(Debug, Clone)]
pub struct Route {
    lat0: f64,
    lon0: f64,
    pts: Vec<[f64; 2]>,
    cum: Vec<f64>,
}

const M_PER_DEG: f64 = 6_371_008.8 * std::f64::consts::PI / 180.0;

impl Route {
    pub fn new(coords: &[[f64; 2]]) -> Route {
        let (lon0, lat0) = (coords[0][0], coords[0][1]);
        let k = lat0.to_radians().cos();
        let pts: Vec<[f64; 2]> = coords
            .iter()
            .map(|c| [(c[0] - lon0) * M_PER_DEG * k, (c[1] - lat0) * M_PER_DEG])
            .collect();
        let mut cum = vec![0.0];
        for w in pts.windows(2) {
            let d = ((w[1][0] - w[0][0]).powi(2) + (w[1][1] - w[0][1]).powi(2)).sqrt();
            cum.push(cum.last().copied().unwrap_or(0.0) + d);
        }
        Route {
            lat0,
            lon0,
            pts,
            cum,
        }
    }

    pub fn length(&self) -> f64 {
        self.cum.last().copied().unwrap_or(0.0)
    }

    /// Position (lat, lon) and heading at distance `s` along the route (wrapping around).
    pub fn at(&self, s: f64) -> (f64, f64, f64) {
        let len = self.length().max(1.0);
        let s = s.rem_euclid(len);
        let i = self
            .cum
            .partition_point(|c| *c <= s)
            .clamp(1, self.pts.len() - 1);
        let (a, b) = (self.pts[i - 1], self.pts[i]);
        let seg = (self.cum[i] - self.cum[i - 1]).max(1e-9);
        let t = (s - self.cum[i - 1]) / seg;
        let x = a[0] + t * (b[0] - a[0]);
        let y = a[1] + t * (b[1] - a[1]);
        let heading = (b[0] - a[0])
            .atan2(b[1] - a[1])
            .to_degrees()
            .rem_euclid(360.0);
        let k = self.lat0.to_radians().cos();
        (
            self.lat0 + y / M_PER_DEG,
            self.lon0 + x / (M_PER_DEG * k),
            heading,
        )
    }
}

/// The public Gothenburg routes (real OSM roads).
pub fn gothenburg_routes() -> Result<Vec<Route>, String> {
    let path = shared_data().join("gothenburg/gothenburg_routes.geojson");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    let features = v["features"].as_array().ok_or("no features")?;
    let mut routes = Vec::new();
    for f in features {
        let coords: Vec<[f64; 2]> = f["geometry"]["coordinates"]
            .as_array()
            .ok_or("no coordinates")?
            .iter()
            .filter_map(|c| Some([c[0].as_f64()?, c[1].as_f64()?]))
            .collect();
        if coords.len() >= 2 {
            routes.push(Route::new(&coords));
        }
    }
    Ok(routes)
}

/// One simulated vehicle: a route, a speed, and its fix sequence.
#[derive(Debug, Clone)]
pub struct SimVehicle {
    pub id: String,
    pub route: usize,
    pub offset_m: f64,
    pub speed_mps: f64,
    pub seq: u64,
}

/// A fleet spread over the routes, every vehicle at its own offset and speed.
pub fn fleet(n: usize, routes: &[Route]) -> Vec<SimVehicle> {
    (0..n)
        .map(|i| SimVehicle {
            id: format!("LV-{i:05}"),
            route: i % routes.len(),
            offset_m: (i as f64 * 137.0) % routes[i % routes.len()].length(),
            speed_mps: 8.0 + (i % 7) as f64,
            seq: 0,
        })
        .collect()
}

/// The next fix of a vehicle, 1 s after its previous one.
pub struct FixSample {
    pub seq: u64,
    pub t_ms: i64,
    pub lat: f64,
    pub lon: f64,
    pub speed_mps: f64,
    pub heading_deg: f64,
}

impl SimVehicle {
    pub fn next_fix(&mut self, routes: &[Route], start_ms: i64) -> FixSample {
        self.seq += 1;
        let s = self.offset_m + self.speed_mps * self.seq as f64;
        let (lat, lon, heading) = routes[self.route].at(s);
        FixSample {
            seq: self.seq,
            t_ms: start_ms + self.seq as i64 * 1000,
            lat,
            lon,
            speed_mps: self.speed_mps,
            heading_deg: heading,
        }
    }
}

/// Prints one comparison line: ours, the peer's, and the ratio.
pub fn report(what: &str, ours: f64, peer_name: &str, peer: f64, unit: &str) {
    println!(
        "{what}: ours {ours:.0} {unit} | {peer_name} {peer:.0} {unit} | ratio {:.2}x",
        if peer > 0.0 {
            ours / peer
        } else {
            f64::INFINITY
        }
    );
}
