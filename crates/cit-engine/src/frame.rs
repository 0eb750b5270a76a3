//! A local metric frame (metres east, metres north) around a reference point: an
//! equirectangular projection, accurate to well under 0.1 % over a city-sized run, which lets the
//! per-fix hot path use plain Euclidean geometry. Exact containment tests use `geo`'s haversine.

use cit_domain::LatLon;
use geo::{Distance, Haversine, Point};

/// Mean Earth radius (GRS80), metres; the same radius `geo::Haversine` and the data use.
pub const EARTH_RADIUS_M: f64 = 6_371_008.8;

#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct LocalFrame {
    lat0: f64,
    lon0: f64,
    m_per_deg_lat: f64,
    m_per_deg_lon: f64,
}

impl LocalFrame {
    pub fn new(origin: LatLon) -> Self {
        let m_per_deg_lat = EARTH_RADIUS_M * std::f64::consts::PI / 180.0;
        LocalFrame {
            lat0: origin.lat,
            lon0: origin.lon,
            m_per_deg_lat,
            m_per_deg_lon: m_per_deg_lat * origin.lat.to_radians().cos(),
        }
    }

    /// Metres east and north of the origin.
    pub fn to_local(&self, lat: f64, lon: f64) -> [f64; 2] {
        [
            (lon - self.lon0) * self.m_per_deg_lon,
            (lat - self.lat0) * self.m_per_deg_lat,
        ]
    }

    pub fn to_latlon(&self, p: [f64; 2]) -> LatLon {
        LatLon {
            lat: self.lat0 + p[1] / self.m_per_deg_lat,
            lon: self.lon0 + p[0] / self.m_per_deg_lon,
        }
    }
}

/// Great-circle distance in metres.
pub fn haversine_m(a: LatLon, b: LatLon) -> f64 {
    Haversine.distance(Point::new(a.lon, a.lat), Point::new(b.lon, b.lat))
}

pub fn dist(a: [f64; 2], b: [f64; 2]) -> f64 {
    ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sqrt()
}

/// Smallest angle between two compass bearings, degrees in [0, 180].
pub fn angle_between(a_deg: f64, b_deg: f64) -> f64 {
    let d = (a_deg - b_deg).rem_euclid(360.0);
    if d > 180.0 { 360.0 - d } else { d }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_frame_agrees_with_haversine_over_city_distances() {
        let origin = LatLon {
            lat: 57.70,
            lon: 11.97,
        };
        let f = LocalFrame::new(origin);
        let p = LatLon {
            lat: 57.73,
            lon: 12.02,
        };
        let local = dist([0.0, 0.0], f.to_local(p.lat, p.lon));
        let exact = haversine_m(origin, p);
        assert!((local - exact).abs() / exact < 1e-3, "{local} vs {exact}");
        let back = f.to_latlon(f.to_local(p.lat, p.lon));
        assert!((back.lat - p.lat).abs() < 1e-9 && (back.lon - p.lon).abs() < 1e-9);
    }

    #[test]
    fn angles_wrap() {
        assert_eq!(angle_between(350.0, 10.0), 20.0);
        assert_eq!(angle_between(90.0, 270.0), 180.0);
    }
}
