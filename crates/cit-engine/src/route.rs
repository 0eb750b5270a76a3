//! The planned route as segments in a local metric frame, indexed by an `rstar` R-tree: distance
//! from a fix to the route (A2) and candidate positions along it ("progress", for U-turns A4).
//!
//! The tree holds runs of consecutive segments ("chunks", as GEOS indexes monotone chains), not
//! single segments: a road's consecutive segments lie close together, so a chunk's box is tight,
//! the tree is an eighth of the size, and a query ends in a short scan of contiguous points. With
//! thousands of runs taking turns, each fix meets its route cold in the cache; fewer, denser
//! nodes are what make that cheap (BENCHMARKS.md, "Detection engine per fix").
//!
//! The per-fix question (every route position within the run's corridor) does not walk the tree
//! while the vehicle follows the route: each group of four consecutive segments carries, built
//! with the route, the segments that can lie within the corridor of any point near it (as ranges
//! of consecutive segments), and a run remembers the segment its latest fix was nearest. The next
//! fix, if still near that segment, scans its group's ranges. The tree is walked only for a fix
//! away from the route.
//! Before, the tree was walked whenever a vehicle left a remembered square, one fix in seven, each
//! costing 2.5 times an ordinary fix: those walks were the engine's p99 (BENCHMARKS.md).

use std::ops::ControlFlow;

use cit_domain::LatLon;
use rstar::primitives::{GeomWithData, Rectangle};
use rstar::{AABB, RStarInsertionStrategy, RTree, RTreeParams};

use crate::frame::{LocalFrame, dist};

/// Segments per chunk.
const CHUNK: usize = 8;

/// A chunk's bounding box, with the chunk's number (its first segment is `CHUNK` times it).
type ChunkGeom = GeomWithData<Rectangle<[f64; 2]>, u32>;

/// Wider nodes than rstar's default (6): a route's tree is built once and only queried, and a
/// shallower tree touches fewer cold cache lines per fix.
struct RouteParams;

impl RTreeParams for RouteParams {
    const MIN_SIZE: usize = 4;
    const MAX_SIZE: usize = 16;
    const REINSERTION_COUNT: usize = 4;
    type DefaultInsertionStrategy = RStarInsertionStrategy;
}

/// A route point in the local frame with what its segment (to the next point) needs per query,
/// side by side so a segment's test reads one or two cache lines.
#[derive(Debug, Clone, Copy)]
struct Vertex {
    at: [f64; 2],
    /// Progress (metres along the route) here.
    s: f64,
    /// Compass bearing of the segment starting here, degrees clockwise from north.
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

/// Snapshots hold the route's points and its reach; the tree, the links and the local geometry
/// are rebuilt from them on load (cheaper to rebuild than to store, and never out of step with the
/// code that builds them).
#[derive(Debug)]
pub struct RouteIndex {
    points: Vec<LatLon>,
    pub frame: LocalFrame,
    /// The points in the local frame; segment `i` runs from vertex `i` to vertex `i + 1`.
    vertices: Vec<Vertex>,
    tree: RTree<ChunkGeom, RouteParams>,
    /// The widest radius the links answer for (the run's corridor).
    reach_m: f64,
    /// None for a route too dense for them (see [`MAX_NEAR_CHUNK`]): the tree answers every fix.
    links: Option<Links>,
    pub length_m: f64,
}

impl RouteIndex {
    /// Builds the index; `route` has at least two points (validated upstream). `reach_m` is the
    /// widest radius [`RouteIndex::candidates`] will be asked for (the run's corridor): the
    /// links answer up to it, the tree beyond.
    pub fn new(route: &[LatLon], reach_m: f64) -> Self {
        let frame = LocalFrame::new(route[0]);
        let local: Vec<[f64; 2]> = route.iter().map(|p| frame.to_local(p.lat, p.lon)).collect();
        let mut vertices = Vec::with_capacity(local.len());
        let mut s = 0.0;
        for (i, &at) in local.iter().enumerate() {
            // The last vertex starts no segment; it carries the one before's bearing.
            let next = local.get(i + 1).copied().unwrap_or(at);
            let (from, to) = if i + 1 < local.len() {
                (at, next)
            } else {
                (local[i - 1], at)
            };
            vertices.push(Vertex {
                at,
                s,
                bearing: (to[0] - from[0])
                    .atan2(to[1] - from[1])
                    .to_degrees()
                    .rem_euclid(360.0),
            });
            s += dist(at, next);
        }
        let segments = local.len() - 1;
        let chunks = (0..segments.div_ceil(CHUNK))
            .map(|c| {
                let pts = &local[c * CHUNK..=((c + 1) * CHUNK).min(segments)];
                let aabb = AABB::from_points(pts);
                GeomWithData::new(Rectangle::from_aabb(aabb), c as u32)
            })
            .collect();
        let mut index = RouteIndex {
            points: route.to_vec(),
            frame,
            vertices,
            tree: RTree::bulk_load_with_params(chunks),
            reach_m,
            links: None,
            length_m: s,
        };
        index.links = Links::new(&index, reach_m);
        index
    }

    pub fn to_local(&self, p: LatLon) -> [f64; 2] {
        self.frame.to_local(p.lat, p.lon)
    }

    /// The chunks whose boxes meet the box `lo`-`hi`, in route order, into `out` (so their
    /// segments, chunk after chunk, are in route order too).
    fn chunks_meeting(&self, lo: [f64; 2], hi: [f64; 2], out: &mut Vec<u32>) {
        out.clear();
        // Internal iteration: no stack to allocate.
        let _ = self
            .tree
            .locate_in_envelope_intersecting_int(&AABB::from_corners(lo, hi), |g| {
                out.push(g.data);
                ControlFlow::<()>::Continue(())
            });
        out.sort_unstable();
    }

    fn segment(&self, i: usize) -> ([f64; 2], [f64; 2]) {
        (self.vertices[i].at, self.vertices[i + 1].at)
    }

    /// The segments of chunk `c`.
    fn chunk_segments(&self, c: u32) -> std::ops::Range<usize> {
        let first = c as usize * CHUNK;
        first..(first + CHUNK).min(self.vertices.len() - 1)
    }

    /// Distance from a local point to the route, metres: chunks in order of their boxes'
    /// distance (a lower bound), until the next box is farther than the best segment found.
    pub fn distance(&self, p: [f64; 2]) -> f64 {
        let mut best2 = f64::INFINITY;
        for (g, box2) in self.tree.nearest_neighbor_iter_with_distance_2(&p) {
            if box2 >= best2 {
                break;
            }
            for i in self.chunk_segments(g.data) {
                let (a, b) = self.segment(i);
                let (_, q) = closest_on_segment(a, b, p);
                best2 = best2.min((p[0] - q[0]).powi(2) + (p[1] - q[1]).powi(2));
            }
        }
        best2.sqrt()
    }

    fn project(&self, i: usize, p: [f64; 2]) -> Candidate {
        let v = &self.vertices[i];
        let (a, b) = (v.at, self.vertices[i + 1].at);
        let (t, q) = closest_on_segment(a, b, p);
        Candidate {
            s: v.s + t * dist(a, b),
            lateral: dist(p, q),
            bearing: v.bearing,
        }
    }

    /// Every route position within `radius` metres of `p`, one per segment, in route order.
    /// `near` remembers the segment an earlier fix was nearest: while `p` is near it too, its
    /// links answer (see the module's doc); otherwise the tree does.
    pub fn candidates(
        &self,
        p: [f64; 2],
        radius: f64,
        near: &mut NearSegments,
        out: &mut Vec<Candidate>,
    ) {
        out.clear();
        let (lo, hi) = (
            [p[0] - radius, p[1] - radius],
            [p[0] + radius, p[1] + radius],
        );
        // The nearest segment seen, for `near`.
        let mut nearest = (f64::INFINITY, 0);
        let mut consider = |i: usize| {
            if self.segment_meets(i, lo, hi) {
                let c = self.project(i, p);
                if c.lateral <= radius {
                    out.push(c);
                    if c.lateral < nearest.0 {
                        nearest = (c.lateral, i);
                    }
                }
            }
        };
        let near_segment = |j: &u32| {
            let (a, b) = self.segment(*j as usize);
            dist(p, closest_on_segment(a, b, p).1) <= LINK_MARGIN_M
        };
        let links = self.links.as_ref().filter(|_| radius <= self.reach_m);
        match (links, near.segment.filter(near_segment)) {
            (Some(links), Some(j)) => {
                for &(from, to) in links.of(j as usize) {
                    (from as usize..to as usize).for_each(&mut consider);
                }
            }
            _ => {
                // Off the route (or its first fix): rare enough to allocate, and a run keeps no
                // buffer for it.
                let mut chunks = Vec::new();
                self.chunks_meeting(lo, hi, &mut chunks);
                for &c in &chunks {
                    self.chunk_segments(c).for_each(&mut consider);
                }
            }
        }
        near.segment = (nearest.0 <= LINK_MARGIN_M).then_some(nearest.1 as u32);
    }

    /// Whether segment `i`'s bounding box meets the box `lo`-`hi`.
    fn segment_meets(&self, i: usize, lo: [f64; 2], hi: [f64; 2]) -> bool {
        let (a, b) = self.segment(i);
        a[0].max(b[0]) >= lo[0]
            && a[0].min(b[0]) <= hi[0]
            && a[1].max(b[1]) >= lo[1]
            && a[1].min(b[1]) <= hi[1]
    }
}

/// How near a fix must be to the segment its run remembers for that segment's links to answer,
/// metres. A vehicle on the route is within GPS error of its road, and a fix a second or a few
/// seconds on is at most tens of metres past the remembered segment's end; wider margins make
/// every group's links, and so every fix's scan, longer.
const LINK_MARGIN_M: f64 = 50.0;

/// For each group of [`LINK_GROUP`] consecutive segments, the segments that can lie within
/// `reach_m` of a point within [`LINK_MARGIN_M`] of one of them: those meeting the group's box
/// widened by both, as ranges of consecutive segments (a road is one range; a part of the route
/// passing by again is another).
#[derive(Debug)]
struct Links {
    /// Per group: its one range, or (when it has several) [`SPILLED`] and where its ranges
    /// start in `spilled`. One inline range keeps the common case one cache line.
    first: Vec<(u32, u32)>,
    /// Each spilled group's ranges behind a header `(how many, 0)`: one flat buffer, not a
    /// vector each (which cost a route more than its vertices).
    spilled: Vec<(u32, u32)>,
}

/// Marks a group whose links are in `Links::spilled`.
const SPILLED: u32 = u32::MAX;

/// Consecutive segments sharing one list of links (a chunk holds two groups): a quarter of the
/// lists to build and keep, for a few segments more to scan a fix (BENCHMARKS.md).
const LINK_GROUP: usize = 4;
const _: () = assert!(
    CHUNK.is_multiple_of(LINK_GROUP),
    "groups must not straddle chunks"
);

/// A chunk with more segments than this within reach of it makes the route too dense for links
/// (a route winding round the same blocks again and again, or a corridor of kilometres): building
/// them would take time and memory growing with the square of the route's size, so the tree
/// answers instead. Bounds a route's links to well under a second to build.
const MAX_NEAR_CHUNK: usize = 1024;

/// Ranges fewer than this many segments apart are joined: scanning a few segments more (the
/// scan is exact) keeps a winding road one range.
const JOIN_GAP: u32 = 4;

impl Links {
    fn new(route: &RouteIndex, reach_m: f64) -> Option<Self> {
        let wide = reach_m + LINK_MARGIN_M;
        let mut links = Links {
            first: Vec::with_capacity((route.vertices.len() - 1).div_ceil(LINK_GROUP)),
            spilled: Vec::new(),
        };
        // One tree query per chunk (its box widened), then each of its groups filters that.
        let mut chunks_near = Vec::new();
        let mut ranges = Vec::<(u32, u32)>::new();
        let widened = |j: usize| {
            let (a, b) = route.segment(j);
            (
                [a[0].min(b[0]) - wide, a[1].min(b[1]) - wide],
                [a[0].max(b[0]) + wide, a[1].max(b[1]) + wide],
            )
        };
        let chunks = (route.vertices.len() - 1).div_ceil(CHUNK);
        for c in 0..chunks as u32 {
            let (lo, hi) = union(route.chunk_segments(c).map(widened));
            // Every segment of the chunks whose boxes meet it (in route order, as the chunks
            // are): the groups' filter below is exact, so the tree's own is not needed.
            route.chunks_meeting(lo, hi, &mut chunks_near);
            let near_chunk = || chunks_near.iter().flat_map(|&d| route.chunk_segments(d));
            if near_chunk().count() > MAX_NEAR_CHUNK {
                return None;
            }
            let segments = route.chunk_segments(c);
            for g in (segments.start..segments.end).step_by(LINK_GROUP) {
                let group = g..(g + LINK_GROUP).min(segments.end);
                let (lo, hi) = union(group.map(widened));
                ranges.clear();
                for i in near_chunk().filter(|&i| route.segment_meets(i, lo, hi)) {
                    let i = i as u32;
                    match ranges.last_mut() {
                        Some(last) if i - last.1 < JOIN_GAP => last.1 = i + 1,
                        _ => ranges.push((i, i + 1)),
                    }
                }
                if let [one] = ranges[..] {
                    links.first.push(one);
                } else {
                    links.first.push((SPILLED, links.spilled.len() as u32));
                    links.spilled.push((ranges.len() as u32, 0));
                    links.spilled.extend_from_slice(&ranges);
                }
            }
        }
        links.spilled.shrink_to_fit();
        Some(links)
    }

    /// The ranges of segment `j`'s group.
    fn of(&self, j: usize) -> &[(u32, u32)] {
        let j = j / LINK_GROUP;
        match self.first[j] {
            (SPILLED, at) => {
                let at = at as usize;
                let n = self.spilled[at].0 as usize;
                &self.spilled[at + 1..=at + n]
            }
            _ => std::slice::from_ref(&self.first[j]),
        }
    }
}

/// The smallest box holding every box (`lo`, `hi`) given.
fn union(boxes: impl Iterator<Item = ([f64; 2], [f64; 2])>) -> ([f64; 2], [f64; 2]) {
    boxes.fold(
        ([f64::INFINITY; 2], [f64::NEG_INFINITY; 2]),
        |(lo, hi), (l, h)| {
            (
                [lo[0].min(l[0]), lo[1].min(l[1])],
                [hi[0].max(h[0]), hi[1].max(h[1])],
            )
        },
    )
}

/// The segment a run's latest fix was nearest (see [`RouteIndex::candidates`]). Derived data: a
/// snapshot leaves it out and it refills itself.
#[derive(Debug, Default, Clone)]
pub struct NearSegments {
    segment: Option<u32>,
}

/// The point of segment `a`-`b` closest to `p`, and where it lies along it (0 at `a`, 1 at `b`).
pub fn closest_on_segment(a: [f64; 2], b: [f64; 2], p: [f64; 2]) -> (f64, [f64; 2]) {
    let (dx, dy) = (b[0] - a[0], b[1] - a[1]);
    let l2 = dx * dx + dy * dy;
    let t = if l2 == 0.0 {
        0.0
    } else {
        (((p[0] - a[0]) * dx + (p[1] - a[1]) * dy) / l2).clamp(0.0, 1.0)
    };
    (t, [a[0] + t * dx, a[1] + t * dy])
}

impl serde::Serialize for RouteIndex {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (&self.points, self.reach_m).serialize(s)
    }
}

impl<'de> serde::Deserialize<'de> for RouteIndex {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (points, reach_m) = <(Vec<LatLon>, f64)>::deserialize(d)?;
        if points.len() < 2 {
            return Err(serde::de::Error::custom(
                "a route needs at least two points",
            ));
        }
        Ok(RouteIndex::new(&points, reach_m))
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
        let r = RouteIndex::new(&[ll(57.70, 11.97), ll(57.71, 11.97)], 60.0);
        assert!((r.length_m - 1111.9).abs() < 1.0, "{}", r.length_m);
        let p = r.frame.to_local(57.705, 11.9705);
        assert!((r.distance(p) - 29.8).abs() < 0.5, "{}", r.distance(p));
        let (mut c, mut near) = (Vec::new(), NearSegments::default());
        r.candidates(p, 60.0, &mut near, &mut c);
        assert_eq!(c.len(), 1);
        assert!((c[0].s - 556.0).abs() < 1.0);
        assert!(c[0].bearing < 1.0 || c[0].bearing > 359.0);
        r.candidates(p, 20.0, &mut near, &mut c);
        assert!(c.is_empty());
    }

    /// A route that winds back on itself (a spiral of 300 points), so chunks overlap and one
    /// position is near several parts of it.
    fn winding() -> RouteIndex {
        let pts: Vec<LatLon> = (0..300)
            .map(|i| {
                let a = i as f64 * 0.21;
                let r = 0.0005 + i as f64 * 0.000_004;
                ll(57.70 + r * a.sin(), 11.97 + 1.8 * r * a.cos())
            })
            .collect();
        RouteIndex::new(&pts, 60.0)
    }

    /// Every segment, measured: what the index must agree with.
    fn brute_force(r: &RouteIndex, p: [f64; 2], radius: f64) -> Vec<Candidate> {
        (0..r.vertices.len() - 1)
            .map(|i| r.project(i, p))
            .filter(|c| c.lateral <= radius)
            .collect()
    }

    #[test]
    fn a_route_too_dense_for_links_is_answered_by_the_tree() {
        // 3,000 points zigzagging inside about 130 m by 120 m: every chunk has every segment
        // within reach, so links would cost the square of the route's size.
        let pts: Vec<LatLon> = (0..3_000)
            .map(|i| {
                let a = f64::from(i) * 0.7;
                ll(57.70 + 0.0006 * a.sin(), 11.97 + 0.001 * (a * 1.3).cos())
            })
            .collect();
        let r = RouteIndex::new(&pts, 60.0);
        assert!(r.links.is_none());
        let (mut near, mut c) = (NearSegments::default(), Vec::new());
        for step in 0..40 {
            let p = [f64::from(step) * 4.0 - 80.0, 15.0];
            r.candidates(p, 60.0, &mut near, &mut c);
            assert_eq!(c, brute_force(&r, p, 60.0), "step {step}");
        }
    }

    #[test]
    fn candidates_and_distance_agree_with_measuring_every_segment() {
        let r = winding();
        // One remembered neighbourhood carried along a walk (as a run's is), one fresh each time.
        let (mut walked, mut c, mut fresh_c) = (NearSegments::default(), Vec::new(), Vec::new());
        let (mut several, mut none) = (0, 0);
        for step in 0..2_000 {
            let a = step as f64 * 0.031;
            let p = [
                (a * 1.7).sin() * 180.0 + step as f64 * 0.05,
                (a * 1.3).cos() * 160.0 - 40.0,
            ];
            // 90 m is wider than the links' reach (60 m): the tree answers.
            for radius in [15.0, 60.0, 90.0] {
                let expected = brute_force(&r, p, radius);
                several += usize::from(expected.len() >= 4);
                none += usize::from(expected.is_empty());
                r.candidates(p, radius, &mut walked, &mut c);
                assert_eq!(c, expected, "step {step}, radius {radius}");
                r.candidates(p, radius, &mut NearSegments::default(), &mut fresh_c);
                assert_eq!(fresh_c, expected, "step {step}, radius {radius}, fresh");
            }
            let nearest = brute_force(&r, p, f64::INFINITY)
                .iter()
                .map(|c| c.lateral)
                .fold(f64::INFINITY, f64::min);
            assert!((r.distance(p) - nearest).abs() < 1e-9, "step {step}");
        }
        // The walk met both hard cases: near several parts of the route, and off it.
        assert!(
            several > 100 && none > 100,
            "several {several}, none {none}"
        );
    }
}
