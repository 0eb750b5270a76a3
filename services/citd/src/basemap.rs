//! The road map a deployment provides (`citd --map FILE`: GeoJSON with LineString or
//! MultiLineString features, such as an OpenStreetMap extract), drawn under the audit picture.
//! Banks run these networks closed, so the base map is the deployment's own file: nothing is
//! fetched from a tile server.

use std::path::Path;

use cit_domain::LatLon;

/// One road line with its bounding box, so a picture draws only the roads it shows.
#[derive(Debug, Clone)]
pub struct Road {
    pub points: Vec<LatLon>,
    /// south, west, north, east
    pub bbox: [f64; 4],
}

#[derive(Debug, Clone, Default)]
pub struct BaseMap {
    pub roads: Vec<Road>,
    /// The file's `attribution` member, when it has one (OpenStreetMap data must show it).
    pub attribution: Option<String>,
}

impl BaseMap {
    /// Reads and checks a map file; the error names the file and what is wrong.
    pub fn load(path: &Path) -> Result<BaseMap, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("map {}: cannot read: {e}", path.display()))?;
        BaseMap::parse(&text).map_err(|e| format!("map {}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<BaseMap, String> {
        let doc: serde_json::Value =
            serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        let features = doc["features"]
            .as_array()
            .ok_or("not a GeoJSON FeatureCollection (no features)")?;
        let mut roads = Vec::new();
        for (i, f) in features.iter().enumerate() {
            let geometry = &f["geometry"];
            let lines: Vec<&serde_json::Value> = match geometry["type"].as_str() {
                Some("LineString") => vec![&geometry["coordinates"]],
                Some("MultiLineString") => geometry["coordinates"]
                    .as_array()
                    .map(|l| l.iter().collect())
                    .unwrap_or_default(),
                // Points, polygons: not roads.
                _ => continue,
            };
            for line in lines {
                let points = line
                    .as_array()
                    .ok_or_else(|| format!("features[{i}]: coordinates are not a list"))?
                    .iter()
                    .map(|c| {
                        let (lon, lat) = (c[0].as_f64(), c[1].as_f64());
                        let (Some(lon), Some(lat)) = (lon, lat) else {
                            return Err(format!("features[{i}]: a position is not [lon, lat]"));
                        };
                        LatLon::new(lat, lon, &format!("features[{i}]")).map_err(|e| e.to_string())
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                if points.len() >= 2 {
                    roads.push(Road::new(points));
                }
            }
        }
        if roads.is_empty() {
            return Err("no LineString or MultiLineString features: nothing to draw".into());
        }
        Ok(BaseMap {
            roads,
            attribution: doc["attribution"].as_str().map(str::to_string),
        })
    }

    /// The roads meeting the box (south, west, north, east).
    pub fn roads_in(&self, bbox: [f64; 4]) -> impl Iterator<Item = &Road> {
        let [s, w, n, e] = bbox;
        self.roads
            .iter()
            .filter(move |r| r.bbox[0] <= n && r.bbox[2] >= s && r.bbox[1] <= e && r.bbox[3] >= w)
    }
}

impl Road {
    fn new(points: Vec<LatLon>) -> Road {
        let mut bbox = [
            f64::INFINITY,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NEG_INFINITY,
        ];
        for p in &points {
            bbox[0] = bbox[0].min(p.lat);
            bbox[1] = bbox[1].min(p.lon);
            bbox[2] = bbox[2].max(p.lat);
            bbox[3] = bbox[3].max(p.lon);
        }
        Road { points, bbox }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roads_are_read_from_lines_and_found_by_box_and_bad_files_say_why() {
        let map = BaseMap::parse(
            r#"{"type":"FeatureCollection","attribution":"© OpenStreetMap contributors","features":[
              {"type":"Feature","geometry":{"type":"LineString","coordinates":[[11.9,57.7],[11.91,57.71]]}},
              {"type":"Feature","geometry":{"type":"MultiLineString","coordinates":[[[12.5,58.0],[12.6,58.1]]]}},
              {"type":"Feature","geometry":{"type":"Point","coordinates":[11.9,57.7]}}]}"#,
        )
        .expect("parses");
        assert_eq!(map.roads.len(), 2);
        assert_eq!(map.roads_in([57.69, 11.89, 57.72, 11.92]).count(), 1);
        assert!(map.attribution.is_some_and(|a| a.contains("OpenStreetMap")));
        for (bad, why) in [
            ("[]", "FeatureCollection"),
            (r#"{"features":[]}"#, "nothing to draw"),
            (
                r#"{"features":[{"geometry":{"type":"LineString","coordinates":[[11.9,95.0],[11.9,57.0]]}}]}"#,
                "features[0]",
            ),
        ] {
            let err = BaseMap::parse(bad).expect_err(why);
            assert!(err.contains(why), "{why}: {err}");
        }
    }
}
