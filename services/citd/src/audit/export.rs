//! Exports of a run for tools outside cit: GeoJSON (route, track, stops, anomalies) for GIS,
//! GPX for navigation and mapping tools, CSV of the fixes for spreadsheets. Pure functions of a
//! [`RunDigest`].

use std::fmt::Write;

use cit_domain::Millis;
use serde_json::{Value, json};

use super::RunDigest;

/// The licence notice for route geometry drawn from OpenStreetMap roads (ODbL 1.0 requires it
/// wherever the data is shown or shared).
pub const ATTRIBUTION: &str = "Map data © OpenStreetMap contributors. Available under the Open \
Database License (ODbL) v1.0, https://www.openstreetmap.org/copyright";

/// RFC 3339 UTC with milliseconds.
pub fn rfc3339(t: Millis) -> String {
    chrono::DateTime::from_timestamp_millis(t.0)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// A GeoJSON FeatureCollection (RFC 7946: lon, lat order).
pub fn geojson(d: &RunDigest) -> Vec<u8> {
    let mut features = vec![json!({
        "type": "Feature",
        "geometry": {
            "type": "LineString",
            "coordinates": d.route.iter().map(|p| [p.lon, p.lat]).collect::<Vec<_>>(),
        },
        "properties": {
            "layer": "route",
            "run_id": d.run_id,
            "vehicle_id": d.vehicle_id,
            "corridor_m": d.corridor_m,
        },
    })];
    // One track per vehicle: after a swap (R8) the replacement's is a feature of its own.
    for t in d.tracks.iter().filter(|t| t.fixes.len() >= 2) {
        features.push(json!({
            "type": "Feature",
            "geometry": {
                "type": "LineString",
                "coordinates": t.fixes.iter().map(|f| [f.lon, f.lat]).collect::<Vec<_>>(),
            },
            "properties": {
                "layer": "track",
                "run_id": d.run_id,
                "vehicle_id": t.vehicle_id,
                "fixes": t.fixes.len(),
                "start": t.fixes.first().map(|f| rfc3339(f.t)),
                "end": t.fixes.last().map(|f| rfc3339(f.t)),
                // Per vertex, so a tool can colour or animate the track.
                "times": t.fixes.iter().map(|f| rfc3339(f.t)).collect::<Vec<_>>(),
                "speeds_mps": t.fixes.iter().map(|f| f.speed_mps).collect::<Vec<_>>(),
            },
        }));
    }
    for s in &d.stops {
        features.push(json!({
            "type": "Feature",
            "geometry": { "type": "Point", "coordinates": [s.position.lon, s.position.lat] },
            "properties": {
                "layer": "stop",
                "stop_id": s.stop_id,
                "name": s.name,
                "kind": s.kind,
                "radius_m": s.radius_m,
                "arrive_by": s.arrive_by.map(rfc3339),
            },
        }));
    }
    for a in &d.anomalies {
        let geometry = match a.position {
            Some(p) => json!({ "type": "Point", "coordinates": [p.lon, p.lat] }),
            None => Value::Null,
        };
        features.push(json!({
            "type": "Feature",
            "geometry": geometry,
            "properties": {
                "layer": "anomaly",
                "anomaly_id": a.id,
                "kind": a.kind.as_str(),
                "rule": a.kind.watch(),
                "severity": a.severity.as_str(),
                "at": rfc3339(a.at),
                "summary": a.summary,
            },
        }));
    }
    let doc = json!({
        "type": "FeatureCollection",
        "name": format!("cit run {}", d.run_id),
        "attribution": ATTRIBUTION,
        "features": features,
    });
    serde_json::to_vec_pretty(&doc).unwrap_or_default()
}

/// XML text and attribute escaping.
pub fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// GPX 1.1: stops and anomalies as waypoints, the plan as a route, the fixes as a track.
pub fn gpx(d: &RunDigest) -> Vec<u8> {
    let mut s = String::new();
    let _ = writeln!(s, r#"<?xml version="1.0" encoding="UTF-8"?>"#);
    let _ = writeln!(
        s,
        r#"<gpx version="1.1" creator="cit" xmlns="http://www.topografix.com/GPX/1/1">"#
    );
    let _ = writeln!(
        s,
        "  <metadata><name>{}</name><desc>{}</desc><copyright author=\"OpenStreetMap contributors\"><license>https://opendatacommons.org/licenses/odbl/1-0/</license></copyright></metadata>",
        xml_escape(&format!("cit run {}", d.run_id)),
        xml_escape(ATTRIBUTION)
    );
    for st in &d.stops {
        let _ = writeln!(
            s,
            "  <wpt lat=\"{}\" lon=\"{}\"><name>{}</name><desc>{}</desc><type>stop</type></wpt>",
            st.position.lat,
            st.position.lon,
            xml_escape(&st.stop_id),
            xml_escape(&format!("{} (radius {} m)", st.name, st.radius_m))
        );
    }
    for a in &d.anomalies {
        if let Some(p) = a.position {
            let _ = writeln!(
                s,
                "  <wpt lat=\"{}\" lon=\"{}\"><time>{}</time><name>{}</name><desc>{}</desc><type>anomaly</type></wpt>",
                p.lat,
                p.lon,
                rfc3339(a.at),
                xml_escape(a.kind.as_str()),
                xml_escape(&format!("{} [{}] {}", a.id, a.severity.as_str(), a.summary))
            );
        }
    }
    let _ = writeln!(s, "  <rte><name>planned route</name>");
    for p in &d.route {
        let _ = writeln!(s, "    <rtept lat=\"{}\" lon=\"{}\"/>", p.lat, p.lon);
    }
    let _ = writeln!(s, "  </rte>");
    for t in &d.tracks {
        let _ = writeln!(
            s,
            "  <trk><name>{}</name><trkseg>",
            xml_escape(&t.vehicle_id)
        );
        for f in &t.fixes {
            let _ = writeln!(
                s,
                "    <trkpt lat=\"{}\" lon=\"{}\"><time>{}</time></trkpt>",
                f.lat,
                f.lon,
                rfc3339(f.t)
            );
        }
        let _ = writeln!(s, "  </trkseg></trk>");
    }
    let _ = writeln!(s, "</gpx>");
    s.into_bytes()
}

/// CSV (RFC 4180) of the run's fixes, one row per fix in order.
pub fn csv(d: &RunDigest) -> Vec<u8> {
    let mut s = String::from(
        "run_id,vehicle_id,seq,time_utc,lat,lon,speed_mps,heading_deg,accuracy_m,ignition,door_open\n",
    );
    let run = csv_field(&d.run_id);
    for (vehicle, f) in d
        .tracks
        .iter()
        .flat_map(|t| t.fixes.iter().map(move |f| (csv_field(&t.vehicle_id), f)))
    {
        let _ = writeln!(
            s,
            "{run},{vehicle},{},{},{},{},{},{},{},{},{}",
            f.seq,
            rfc3339(f.t),
            f.lat,
            f.lon,
            f.speed_mps,
            f.heading_deg,
            f.accuracy_m,
            f.ignition,
            f.door_open
        );
    }
    s.into_bytes()
}

fn csv_field(v: &str) -> String {
    if v.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", v.replace('"', "\"\""))
    } else {
        v.to_string()
    }
}
