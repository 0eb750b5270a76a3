//! The operations files in deploy/ name only metrics citd exports: every `cit_*` series in the
//! Prometheus alerting rules and the Grafana dashboard is found in a running citd's /metrics,
//! after a scenario has played so that the labelled families (commands, anomalies, RPCs) have
//! samples. A renamed metric fails here instead of leaving an alert that never fires.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;

use citd::config::ClockMode;

/// Every `cit_name` token in `text` (letters, digits and `_` after the prefix).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("cit_") {
        let before = rest[..i].chars().next_back();
        let tail = &rest[i..];
        let len = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        // A whole token, and a name (not the bare prefix of a "cit_*" in a comment).
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') && len > "cit_".len() {
            names.insert(tail[..len].to_string());
        }
        rest = &tail[len.max(1)..];
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_alerts_and_the_dashboard_name_is_exported() {
    let deploy = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
    let alerts = std::fs::read_to_string(deploy.join("prometheus/cit-alerts.yml")).expect("rules");
    let dashboard =
        std::fs::read_to_string(deploy.join("grafana/cit-dashboard.json")).expect("dashboard");
    let parsed: serde_json::Value =
        serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    assert!(
        parsed["panels"].as_array().is_some_and(|p| !p.is_empty()),
        "the dashboard has panels"
    );
    let wanted: BTreeSet<String> = metric_names(&alerts)
        .into_iter()
        .chain(metric_names(&dashboard))
        .collect();
    assert!(wanted.len() >= 10, "{wanted:?}");

    let dir = tempfile::tempdir().expect("tmp");
    let config = citd::config::Config {
        metrics_listen: Some("127.0.0.1:0".parse().expect("addr")),
        ..common::config(dir.path(), ClockMode::Scenario)
    };
    let s = common::scenario("gbg-r004-fake-checkpoint.json");
    let (server, _c) = common::played_on(config, &s).await;
    let exported: BTreeSet<String> = common::metrics_text(&server)
        .await
        .lines()
        .filter(|l| l.starts_with("cit_"))
        .map(|l| l.split(['{', ' ']).next().unwrap_or_default().to_string())
        .collect();
    let missing: Vec<&String> = wanted.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "named in deploy/ but not exported: {missing:?}\nexported: {exported:?}"
    );
    server.stop().await.expect("stop");
}
