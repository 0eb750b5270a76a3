//! A picture of a run as SVG, for an audit file or a browser: the route corridor, the track
//! coloured by speed, the planned stops with their geofences, the anomalies marked with their
//! times, a legend, a scale bar and the OpenStreetMap attribution. Pure: a [`RunDigest`] in, a
//! string out. SVG because it is text (diffable, embeddable, exact at any zoom) and needs no
//! rasteriser in the server.

use std::fmt::Write;

use cit_domain::LatLon;
use cit_domain::event::Severity;

use super::RunDigest;
use super::export::{ATTRIBUTION, rfc3339, xml_escape};
use crate::basemap::BaseMap;

pub const DEFAULT_WIDTH_PX: u32 = 1200;
pub const MIN_WIDTH_PX: u32 = 320;
pub const MAX_WIDTH_PX: u32 = 8000;

/// Height of the legend band under the map, px.
const LEGEND_PX: f64 = 110.0;
/// Margin around the map, px.
const MARGIN_PX: f64 = 24.0;
/// Track colours from standing to the speed limit and over (colour-blind-safe ramp).
const RAMP: [&str; 6] = [
    "#2c7bb6", "#00a6ca", "#00ccbc", "#90eb9d", "#f9d057", "#d7191c",
];

/// Local equirectangular projection to pixels: exact enough over a city, and keeps metres
/// per pixel the same in both directions, which the corridor width and scale bar need.
struct Projection {
    lat0: f64,
    lon0: f64,
    cos0: f64,
    m_per_px: f64,
    x_off: f64,
    y_off: f64,
}

const M_PER_DEG: f64 = 111_320.0;

impl Projection {
    fn fit(points: &[LatLon], width: f64, height: f64) -> Projection {
        let (mut s, mut w, mut n, mut e) = (90.0f64, 180.0f64, -90.0f64, -180.0f64);
        for p in points {
            s = s.min(p.lat);
            n = n.max(p.lat);
            w = w.min(p.lon);
            e = e.max(p.lon);
        }
        if points.is_empty() {
            (s, w, n, e) = (0.0, 0.0, 0.0, 0.0);
        }
        let lat0 = (s + n) / 2.0;
        let lon0 = (w + e) / 2.0;
        let cos0 = lat0.to_radians().cos();
        let span_x = ((e - w) * cos0 * M_PER_DEG).max(50.0);
        let span_y = ((n - s) * M_PER_DEG).max(50.0);
        let m_per_px =
            (span_x / (width - 2.0 * MARGIN_PX)).max(span_y / (height - 2.0 * MARGIN_PX));
        Projection {
            lat0,
            lon0,
            cos0,
            m_per_px,
            x_off: width / 2.0,
            y_off: height / 2.0,
        }
    }

    /// The lat/lon box the picture of `width` x `height` px shows (south, west, north, east).
    fn shown(&self, width: f64, height: f64) -> [f64; 4] {
        let half_lat = height / 2.0 * self.m_per_px / M_PER_DEG;
        let half_lon = width / 2.0 * self.m_per_px / (M_PER_DEG * self.cos0);
        [
            self.lat0 - half_lat,
            self.lon0 - half_lon,
            self.lat0 + half_lat,
            self.lon0 + half_lon,
        ]
    }

    fn xy(&self, p: LatLon) -> (f64, f64) {
        let x = (p.lon - self.lon0) * self.cos0 * M_PER_DEG / self.m_per_px;
        let y = (p.lat - self.lat0) * M_PER_DEG / self.m_per_px;
        (self.x_off + x, self.y_off - y)
    }
}

fn speed_bucket(speed_mps: f64, limit_kmh: f64) -> usize {
    let limit = if limit_kmh > 0.0 { limit_kmh } else { 90.0 } / 3.6;
    if speed_mps > limit {
        return RAMP.len() - 1;
    }
    ((speed_mps / limit) * (RAMP.len() - 1) as f64)
        .floor()
        .clamp(0.0, (RAMP.len() - 2) as f64) as usize
}

/// Rough width of a 12 px sans-serif label, px: enough to keep labels inside and apart.
fn text_width(text: &str) -> f64 {
    text.chars().count() as f64 * 7.0
}

fn severity_colour(s: Severity) -> &'static str {
    match s {
        Severity::Low => "#7b7b7b",
        Severity::Medium => "#e08a00",
        Severity::High => "#d7301f",
        Severity::Critical => "#7a0177",
    }
}

/// A scale bar length (1, 2 or 5 x 10^n metres) near a fifth of the map width.
fn nice_length(m: f64) -> f64 {
    let p = 10f64.powf(m.log10().floor());
    [5.0, 2.0, 1.0]
        .into_iter()
        .map(|k| k * p)
        .find(|l| *l <= m)
        .unwrap_or(p)
}

/// The SVG document, `width_px` wide (clamped to the supported range; 0 = default), over the
/// deployment's road map when there is one.
pub fn svg(d: &RunDigest, width_px: u32, map: Option<&BaseMap>) -> String {
    let width = match width_px {
        0 => DEFAULT_WIDTH_PX,
        w => w.clamp(MIN_WIDTH_PX, MAX_WIDTH_PX),
    } as f64;
    let map_h = (width * 0.7).round();
    let height = map_h + LEGEND_PX;
    let mut points: Vec<LatLon> = d.route.clone();
    points.extend(d.stops.iter().map(|s| s.position));
    points.extend(d.fixes().map(|f| LatLon {
        lat: f.lat,
        lon: f.lon,
    }));
    let proj = Projection::fit(&points, width, map_h);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        s,
        "<title>{}</title>",
        xml_escape(&format!("cit run {} ({})", d.run_id, d.vehicle_id))
    );
    let _ = writeln!(s, r##"<rect width="100%" height="100%" fill="#fbfbf8"/>"##);
    let path = |pts: &mut dyn Iterator<Item = LatLon>| -> String {
        pts.map(|p| {
            let (x, y) = proj.xy(p);
            format!("{x:.1},{y:.1}")
        })
        .collect::<Vec<_>>()
        .join(" ")
    };
    // Roads of the deployment's map under everything, clipped to the map's area.
    if let Some(map) = map {
        let _ = writeln!(
            s,
            r##"<clipPath id="map-area"><rect width="{width}" height="{map_h}"/></clipPath><g id="roads" clip-path="url(#map-area)" fill="none" stroke="#d9d6cc" stroke-width="1.5" stroke-linecap="round" stroke-linejoin="round">"##
        );
        for road in map.roads_in(proj.shown(width, map_h)) {
            let pts = path(&mut road.points.iter().copied());
            let _ = writeln!(s, r#"<polyline points="{pts}"/>"#);
        }
        let _ = writeln!(s, "</g>");
    }
    // Corridor: the route stroked at twice the corridor half-width, to scale.
    let route = path(&mut d.route.iter().copied());
    let corridor_px = (2.0 * d.corridor_m / proj.m_per_px).max(2.0);
    let _ = writeln!(
        s,
        r##"<g id="corridor"><polyline points="{route}" fill="none" stroke="#cfe0f5" stroke-width="{corridor_px:.1}" stroke-linecap="round" stroke-linejoin="round"/><polyline points="{route}" fill="none" stroke="#5b7fb0" stroke-width="1.2" stroke-dasharray="6 4"/></g>"##
    );
    // Track: consecutive fixes of one speed band drawn as one polyline.
    let _ = writeln!(
        s,
        r#"<g id="track" fill="none" stroke-width="3" stroke-linecap="round" stroke-linejoin="round">"#
    );
    // Each vehicle's track apart (R8): a replacement's is dashed, and no line joins the two.
    for (k, t) in d.tracks.iter().enumerate() {
        let fixes = &t.fixes;
        let dash = if k > 0 {
            r#" stroke-dasharray="7 3""#
        } else {
            ""
        };
        let _ = writeln!(
            s,
            r#"<g data-vehicle="{}"{dash}>"#,
            xml_escape(&t.vehicle_id)
        );
        let mut i = 0;
        while i + 1 < fixes.len() {
            let band = speed_bucket(fixes[i + 1].speed_mps, d.speed_limit_kmh);
            let mut j = i + 1;
            while j + 1 < fixes.len()
                && speed_bucket(fixes[j + 1].speed_mps, d.speed_limit_kmh) == band
            {
                j += 1;
            }
            let pts = path(&mut fixes[i..=j].iter().map(|f| LatLon {
                lat: f.lat,
                lon: f.lon,
            }));
            let _ = writeln!(s, r#"<polyline points="{pts}" stroke="{}"/>"#, RAMP[band]);
            i = j;
        }
        let _ = writeln!(s, "</g>");
    }
    let _ = writeln!(s, "</g>");
    // Stops: the geofence to scale (at least a visible dot) and the name.
    let _ = writeln!(s, r#"<g id="stops">"#);
    for st in &d.stops {
        let (x, y) = proj.xy(st.position);
        let r = (st.radius_m / proj.m_per_px).max(4.0);
        // Labels near the right edge go on the stop's left, so none is cut off.
        let right = x + r + 3.0 + text_width(&st.stop_id) < width;
        let (lx, anchor) = if right {
            (x + r + 3.0, "start")
        } else {
            (x - r - 3.0, "end")
        };
        let _ = writeln!(
            s,
            r##"<circle cx="{x:.1}" cy="{y:.1}" r="{r:.1}" fill="#ffffff" fill-opacity="0.6" stroke="#333" stroke-width="1.5"/><text x="{lx:.1}" y="{:.1}" fill="#222" text-anchor="{anchor}">{}</text>"##,
            y + 4.0,
            xml_escape(&st.stop_id)
        );
    }
    let _ = writeln!(s, "</g>");
    // Anomalies: a diamond coloured by severity, with time and kind.
    let _ = writeln!(s, r#"<g id="anomalies">"#);
    let mut placed: Vec<(f64, f64, f64)> = Vec::new();
    for a in &d.anomalies {
        // Custody anomalies (a weapon not returned, a round-count mismatch) have no place: the
        // legend lists them.
        let Some(p) = a.position else { continue };
        let (x, y) = proj.xy(p);
        let time = rfc3339(a.at);
        let hms = time.get(11..19).unwrap_or(&time);
        let label = format!("{hms} {}", a.kind.as_str());
        let w = text_width(&label);
        let (lx, anchor) = if x + 8.0 + w < width {
            (x + 8.0, "start")
        } else {
            (x - 8.0, "end")
        };
        // Anomalies at one place (a duress during a skipped stop) stack their labels instead of
        // printing over each other.
        let mut ly = y - 6.0;
        while placed
            .iter()
            .any(|(px, py, pw)| (ly - py).abs() < 14.0 && (lx - px).abs() < w.max(*pw))
        {
            ly += 14.0;
        }
        placed.push((lx, ly, w));
        let title = format!(
            "{} {} [{}]: {}",
            time,
            a.kind.as_str(),
            a.severity.as_str(),
            a.summary
        );
        let colour = severity_colour(a.severity);
        let _ = writeln!(
            s,
            r##"<g><title>{}</title><path d="M{x:.1},{:.1} l6,6 l-6,6 l-6,-6 z" fill="{colour}" stroke="#fff"/><text x="{lx:.1}" y="{ly:.1}" fill="{colour}" font-weight="bold" text-anchor="{anchor}">{}</text></g>"##,
            xml_escape(&title),
            y - 6.0,
            xml_escape(&label)
        );
    }
    let _ = writeln!(s, "</g>");
    legend(&mut s, d, &proj, width, map_h);
    let _ = writeln!(s, "</svg>");
    s
}

fn legend(s: &mut String, d: &RunDigest, proj: &Projection, width: f64, map_h: f64) {
    let y0 = map_h + 8.0;
    let _ = writeln!(
        s,
        r##"<g id="legend"><line x1="0" y1="{map_h}" x2="{width}" y2="{map_h}" stroke="#999"/>"##
    );
    let limit = if d.speed_limit_kmh > 0.0 {
        d.speed_limit_kmh
    } else {
        90.0
    };
    let _ = writeln!(
        s,
        r#"<text x="{MARGIN_PX}" y="{:.1}">Track speed (km/h)</text>"#,
        y0 + 12.0
    );
    let step = limit / (RAMP.len() - 1) as f64;
    for (k, colour) in RAMP.iter().enumerate() {
        let x = MARGIN_PX + k as f64 * 52.0;
        let label = if k == RAMP.len() - 1 {
            format!("> {limit:.0}")
        } else {
            format!("{:.0}–{:.0}", k as f64 * step, (k + 1) as f64 * step)
        };
        let _ = writeln!(
            s,
            r#"<rect x="{x}" y="{:.1}" width="48" height="8" fill="{colour}"/><text x="{x}" y="{:.1}" font-size="10">{}</text>"#,
            y0 + 18.0,
            y0 + 38.0,
            xml_escape(&label)
        );
    }
    let x1 = MARGIN_PX + RAMP.len() as f64 * 52.0 + 24.0;
    let _ = writeln!(
        s,
        r##"<line x1="{x1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#cfe0f5" stroke-width="8"/><text x="{:.1}" y="{:.1}">corridor ±{:.0} m</text>"##,
        y0 + 14.0,
        x1 + 30.0,
        y0 + 14.0,
        x1 + 36.0,
        y0 + 18.0,
        d.corridor_m
    );
    let _ = writeln!(
        s,
        r##"<circle cx="{:.1}" cy="{:.1}" r="5" fill="#fff" stroke="#333" stroke-width="1.5"/><text x="{:.1}" y="{:.1}">planned stop (geofence)</text>"##,
        x1 + 15.0,
        y0 + 32.0,
        x1 + 36.0,
        y0 + 36.0
    );
    for (k, sev) in [
        Severity::Low,
        Severity::Medium,
        Severity::High,
        Severity::Critical,
    ]
    .into_iter()
    .enumerate()
    {
        let x = x1 + k as f64 * 70.0;
        let _ = writeln!(
            s,
            r#"<path d="M{:.1},{:.1} l5,5 l-5,5 l-5,-5 z" fill="{}"/><text x="{:.1}" y="{:.1}" font-size="10">{}</text>"#,
            x + 5.0,
            y0 + 44.0,
            severity_colour(sev),
            x + 13.0,
            y0 + 53.0,
            sev.as_str()
        );
    }
    // Scale bar, bottom right of the map.
    let bar_m = nice_length(width * proj.m_per_px / 5.0);
    let bar_px = bar_m / proj.m_per_px;
    let bx = width - MARGIN_PX - bar_px;
    let by = map_h - 14.0;
    let label = if bar_m >= 1000.0 {
        format!("{} km", bar_m / 1000.0)
    } else {
        format!("{bar_m} m")
    };
    let _ = writeln!(
        s,
        r##"<g id="scale"><rect x="{bx:.1}" y="{by:.1}" width="{bar_px:.1}" height="4" fill="#222"/><text x="{bx:.1}" y="{:.1}">{label}</text></g>"##,
        by - 4.0
    );
    let unplaced: Vec<String> = d
        .anomalies
        .iter()
        .filter(|a| a.position.is_none())
        .map(|a| {
            let time = rfc3339(a.at);
            format!("{} {}", time.get(11..19).unwrap_or(&time), a.kind.as_str())
        })
        .collect();
    let total = match d.anomalies.len() {
        1 => "1 anomaly".to_string(),
        n => format!("{n} anomalies"),
    };
    let anomalies = match unplaced.len() {
        0 => total,
        n => format!(
            "{total} ({} on the map, {n} without a place)",
            d.anomalies.len() - n
        ),
    };
    let title = format!(
        "Run {} · vehicle {} · {} fixes · {anomalies}{}",
        d.run_id,
        d.vehicle_id,
        d.fix_count(),
        d.departed_at
            .map(|t| format!(" · departed {}", rfc3339(t)))
            .unwrap_or_default()
    );
    let _ = writeln!(
        s,
        r#"<text x="{MARGIN_PX}" y="{:.1}" font-weight="bold">{}</text>"#,
        y0 + 68.0,
        xml_escape(&title)
    );
    if !unplaced.is_empty() {
        let _ = writeln!(
            s,
            r#"<text x="{MARGIN_PX}" y="{:.1}">{}</text>"#,
            y0 + 84.0,
            xml_escape(&format!("Without a place: {}", unplaced.join(", ")))
        );
    }
    let _ = writeln!(
        s,
        r##"<text x="{:.1}" y="{:.1}" font-size="10" fill="#555" text-anchor="end">{}</text></g>"##,
        width - MARGIN_PX,
        y0 + 98.0,
        xml_escape(ATTRIBUTION)
    );
}

#[cfg(test)]
mod tests {
    use cit_domain::event::{Anomaly, AnomalyKind};

    use super::*;

    fn anomaly(kind: AnomalyKind, position: Option<LatLon>) -> Anomaly {
        Anomaly {
            id: format!("{}:R-1:p1", kind.as_str()),
            kind,
            run_id: "R-1".into(),
            vehicle_id: "V-1".into(),
            at: cit_domain::Millis(1_773_000_000_000),
            severity: Severity::High,
            summary: String::new(),
            position,
            evidence: serde_json::Value::Null,
        }
    }

    #[test]
    fn roads_are_drawn_under_the_run_when_a_map_is_given_and_every_anomaly_is_counted_honestly() {
        let here = LatLon {
            lat: 57.70,
            lon: 11.97,
        };
        let d = RunDigest {
            run_id: "R-1".into(),
            vehicle_id: "V-1".into(),
            route: vec![
                here,
                LatLon {
                    lat: 57.71,
                    lon: 11.98,
                },
            ],
            corridor_m: 60.0,
            anomalies: vec![
                anomaly(AnomalyKind::RouteDeviation, Some(here)),
                anomaly(AnomalyKind::AmmoMismatch, None),
            ],
            ..RunDigest::default()
        };
        let map = BaseMap::parse(
            r#"{"features":[
              {"geometry":{"type":"LineString","coordinates":[[11.965,57.705],[11.985,57.705]]}},
              {"geometry":{"type":"LineString","coordinates":[[13.0,59.0],[13.1,59.1]]}}]}"#,
        )
        .expect("map");
        let with = svg(&d, 0, Some(&map));
        assert_eq!(with.matches(r#"<g id="roads""#).count(), 1);
        let group = |id: &str| {
            let from = with.find(&format!(r#"<g id="{id}""#)).unwrap_or(0);
            let to = with[from..].find("\n</g>").map_or(with.len(), |n| from + n);
            with[from..to].to_string()
        };
        assert_eq!(
            group("roads").matches("<polyline").count(),
            1,
            "only the road in view"
        );
        assert!(!svg(&d, 0, None).contains(r#"id="roads""#));
        // One anomaly drawn, the other named in the legend, and the count says so.
        assert_eq!(group("anomalies").matches("<path d=").count(), 1);
        assert!(
            with.contains("2 anomalies (1 on the map, 1 without a place)")
                && with.contains("Without a place: 20:00:00 ammo_mismatch"),
            "{with}"
        );
    }

    #[test]
    fn scale_bar_lengths_are_round() {
        assert_eq!(nice_length(730.0), 500.0);
        assert_eq!(nice_length(1999.0), 1000.0);
        assert_eq!(nice_length(2100.0), 2000.0);
    }

    #[test]
    fn speed_bands_put_overspeed_last() {
        assert_eq!(speed_bucket(0.0, 90.0), 0);
        assert_eq!(speed_bucket(25.1, 90.0), RAMP.len() - 1);
        assert!(speed_bucket(24.9, 90.0) < RAMP.len() - 1);
    }
}
