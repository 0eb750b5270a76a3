//! The planned route as segments in a local metric frame, in an `rstar` R-tree: distance from a
//! fix to the route (A2) and candidate positions along it ("progress", for U-turns A4).

use cit_domain::LatLon;
use rstar::primitives::{GeomWithData, Line};
use rstar::{PointDistance, RTree};

use crate::frame::{LocalFrame, dist};

type SegmentGeom = GeomWithData<Line<[f64; 2]>, u32>;

#[derive(Debug, Clone, Copy)]
struct Segment {
    /// Progress (metres along the route) at the segment's start.
    s0: f64,
    len: f64,
    /// Compass bearing of the segment, degrees clockwise from north.
    bearing: f64,
}

/// A position on the route near a fix.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    /// Metres along the route.
    pub s: f64,
    /// Metres from the fix to the route at `s`.
    pub lateral: f64,
    /// Bearing of the route at `s`.
    pub bearing: f64,
}

/// Snapshots hold the route's points; the tree and segments are rebuilt from them on load
/// (cheaper to rebuild than to store, and never out of step with the code that builds them).
#[derive(Debug)]
pub struct RouteIndex {
    points: Vec<LatLon>,
    pub frame: LocalFrame,
    tree: RTree<SegmentGeom>,
    segments: Vec<Segment>,
    pub length_m: f64,
}

impl RouteIndex {
    /// Builds the index; `route` has at least two points (validated upstream).
    pub fn new(route: &[LatLon]) -> Self {
        let frame = LocalFrame::new(route[0]);
        let pts: Vec<[f64; 2]> = route.iter().map(|p| frame.to_local(p.lat, p.lon)).collect();
        let mut segments = Vec::with_capacity(pts.len().saturating_sub(1));
        let mut geoms = Vec::with_capacity(segments.capacity());
        let mut s = 0.0;
        for w in pts.windows(2) {
            let len = dist(w[0], w[1]);
            let bearing = (w[1][0] - w[0][0])
                .atan2(w[1][1] - w[0][1])
                .to_degrees()
                .rem_euclid(360.0);
            geoms.push(GeomWithData::new(
                Line::new(w[0], w[1]),
                segments.len() as u32,
            ));
            segments.push(Segment {
                s0: s,
                len,
                bearing,
            });
            s += len;
        }
        RouteIndex {
            points: route.to_vec(),
            frame,
            tree: RTree::bulk_load(geoms),
            segments,
            length_m: s,
        }
    }

    pub fn to_local(&self, p: LatLon) -> [f64; 2] {
        self.frame.to_local(p.lat, p.lon)
    }

    /// Distance from a local point to the route, metres.
    pub fn distance(&self, p: [f64; 2]) -> f64 {
        self.tree
            .nearest_neighbor(&p)
            .map(|g| g.geom().distance_2(&p).sqrt())
            .unwrap_or(f64::INFINITY)
    }

    fn project(&self, g: &SegmentGeom, p: [f64; 2]) -> Candidate {
        let seg = self.segments[g.data as usize];
        let line = g.geom();
        let (a, b) = (line.from, line.to);
        let (dx, dy) = (b[0] - a[0], b[1] - a[1]);
        let l2 = dx * dx + dy * dy;
        let t = if l2 == 0.0 {
            0.0
        } else {
            (((p[0] - a[0]) * dx + (p[1] - a[1]) * dy) / l2).clamp(0.0, 1.0)
        };
        let q = [a[0] + t * dx, a[1] + t * dy];
        Candidate {
            s: seg.s0 + t * seg.len,
            lateral: dist(p, q),
            bearing: seg.bearing,
        }
    }

    /// Every route position within `radius` metres of `p`, one per segment.
    pub fn candidates(&self, p: [f64; 2], radius: f64, out: &mut Vec<Candidate>) {
        out.clear();
        for g in self.tree.locate_within_distance(p, radius * radius) {
            out.push(self.project(g, p));
        }
    }
}

impl serde::Serialize for RouteIndex {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.points.serialize(s)
    }
}

impl<'de> serde::Deserialize<'de> for RouteIndex {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let points = Vec::<LatLon>::deserialize(d)?;
        if points.len() < 2 {
            return Err(serde::de::Error::custom(
                "a route needs at least two points",
            ));
        }
        Ok(RouteIndex::new(&points))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ll(lat: f64, lon: f64) -> LatLon {
        LatLon { lat, lon }
    }

    #[test]
    fn distance_and_progress_on_a_straight_road() {
        // About 1.1 km due north.
        let r = RouteIndex::new(&[ll(57.70, 11.97), ll(57.71, 11.97)]);
        assert!((r.length_m - 1111.9).abs() < 1.0, "{}", r.length_m);
        let p = r.frame.to_local(57.705, 11.9705);
        assert!((r.distance(p) - 29.8).abs() < 0.5, "{}", r.distance(p));
        let mut c = Vec::new();
        r.candidates(p, 60.0, &mut c);
        assert_eq!(c.len(), 1);
        assert!((c[0].s - 556.0).abs() < 1.0);
        assert!(c[0].bearing < 1.0 || c[0].bearing > 359.0);
        r.candidates(p, 20.0, &mut c);
        assert!(c.is_empty());
    }
}
