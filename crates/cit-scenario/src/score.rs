//! Runner output lines (SCENARIOS.md, "Runner output") and scoring against `expect`: an expected
//! anomaly matches a raised one of the same kind and run with `at` within `tolerance_s` after
//! the expected time; a refusal matches by index and rule. With `exhaustive`, anything unmatched
//! that was raised is a false alarm.

use cit_domain::Millis;
use serde::Serialize;

use crate::model::{Scenario, format_time};

/// One line of runner output.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Output {
    Anomaly {
        kind: String,
        run: String,
        vehicle: String,
        at: String,
        severity: String,
        rule: String,
        #[serde(skip)]
        at_ms: Millis,
    },
    Refusal {
        index: usize,
        rule: String,
        code: String,
        message: String,
    },
    /// An operation that failed for a reason other than a rule (a bug, or not built yet).
    Error {
        index: usize,
        op: String,
        code: String,
        message: String,
    },
}

impl Output {
    pub fn anomaly(
        kind: &str,
        run: &str,
        vehicle: &str,
        at: Millis,
        severity: &str,
        rule: &str,
    ) -> Output {
        Output::Anomaly {
            kind: kind.into(),
            run: run.into(),
            vehicle: vehicle.into(),
            at: format_time(at),
            severity: severity.into(),
            rule: rule.into(),
            at_ms: at,
        }
    }

    pub fn to_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[derive(Debug, Clone, Default)]
pub struct Score {
    pub missed: Vec<String>,
    pub false_alarms: Vec<String>,
    pub errors: Vec<String>,
}

impl Score {
    pub fn passed(&self) -> bool {
        self.missed.is_empty() && self.false_alarms.is_empty() && self.errors.is_empty()
    }
}

pub fn score(scenario: &Scenario, outputs: &[Output]) -> Score {
    let mut s = Score::default();
    let mut used = vec![false; outputs.len()];
    for e in &scenario.expect.anomalies {
        let tol = e.tolerance_s.unwrap_or(30.0);
        let hit = outputs.iter().enumerate().position(|(i, o)| {
            !used[i]
                && matches!(o, Output::Anomaly { kind, run, at_ms, .. }
                    if *kind == e.kind && *run == e.run
                        && at_ms.0 >= e.at.0 && at_ms.secs_since(e.at) <= tol)
        });
        match hit {
            Some(i) => used[i] = true,
            None => s.missed.push(format!(
                "anomaly {} on {} at {} (+{tol} s)",
                e.kind,
                e.run,
                format_time(e.at)
            )),
        }
    }
    for e in &scenario.expect.refusals {
        let hit = outputs.iter().enumerate().position(|(i, o)| {
            !used[i] && matches!(o, Output::Refusal { index, rule, .. } if *index == e.index && *rule == e.rule)
        });
        match hit {
            Some(i) => used[i] = true,
            None => s
                .missed
                .push(format!("refusal {} at timeline index {}", e.rule, e.index)),
        }
    }
    for (i, o) in outputs.iter().enumerate() {
        if used[i] {
            continue;
        }
        match o {
            Output::Error { .. } => s.errors.push(o.to_line()),
            _ if scenario.expect.exhaustive => s.false_alarms.push(o.to_line()),
            _ => {}
        }
    }
    s
}
