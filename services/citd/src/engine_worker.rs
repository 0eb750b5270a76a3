//! Runs the pure detection engine live: a catch-up subscription to the whole log feeds it events
//! in order; what it raises is appended to the run's stream as `AnomalyRaised` with an id derived
//! from the anomaly's deterministic id, so a restart that sees an input again stores nothing
//! twice. In wall-clock mode a one-second timer moves the engine's time so deadlines fire when
//! nothing arrives; in scenario mode time moves only with the log (ticks are logged).

use std::sync::Arc;
use std::time::Duration;

use cit_domain::event::Event;
use cit_engine::Engine;
use cit_store::{ExpectedVersion, SubscriptionFilter, SubscriptionMessage};
use futures::StreamExt;
use uuid::Uuid;

use crate::anomalies::Anomalies;
use crate::app::{App, ID_NAMESPACE, decode, encode};
use crate::clock::wall_now;
use crate::fleet::Fleet;

/// Runs until `shutdown` resolves or the subscription fails.
pub async fn run(
    app: Arc<App>,
    anomalies: Arc<Anomalies>,
    fleet: Arc<Fleet>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) {
    let mut engine = Engine::new();
    let mut sub = app.store.subscribe(SubscriptionFilter::All, None);
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let wall = !app.clock.is_scenario();
    tokio::pin!(shutdown);
    let mut position = 0;
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = ticker.tick(), if wall => {
                let raised = engine.advance_to(wall_now(), true);
                persist(&app, &anomalies, raised).await;
            }
            msg = sub.next() => {
                let Some(msg) = msg else { break };
                match msg {
                    Ok(SubscriptionMessage::Event(r)) => {
                        position = r.position;
                        if let Some(event) = decode(&r) {
                            anomalies.apply(&event);
                            fleet.apply(&event);
                            let raised = engine.handle(r.position, &event);
                            // The read models see the engine's view of the run in the same step.
                            if let Event::FixesRecorded { run_id: Some(run), .. }
                            | Event::RunPlanned { run_id: run, .. }
                            | Event::RunDeparted { run_id: run, .. } = &event
                            {
                                fleet.set_standing(run, engine.standing(run));
                            }
                            persist(&app, &anomalies, raised).await;
                        }
                        anomalies.engine_position.send_replace(position);
                        let head = *app.written.borrow();
                        app.metrics.engine_lag_events.set(head.saturating_sub(position) as i64);
                    }
                    Ok(SubscriptionMessage::CaughtUp { position: p }) => {
                        tracing::info!(position = p, runs = engine.run_count(), "detection engine caught up");
                        anomalies.engine_position.send_replace(p.max(position));
                    }
                    Err(e) => {
                        tracing::error!(cause = %e, "engine subscription failed");
                        break;
                    }
                }
            }
        }
    }
}

async fn persist(app: &App, anomalies: &Anomalies, raised: Vec<cit_domain::event::Anomaly>) {
    for a in raised {
        let event = Event::AnomalyRaised { anomaly: a.clone() };
        let id = Uuid::new_v5(&ID_NAMESPACE, format!("anomaly/{}", a.id).as_bytes());
        // Retried until durable: an anomaly must not be lost to a passing store error.
        let mut delay = Duration::from_millis(10);
        loop {
            match app
                .store
                .append(
                    &event.stream(),
                    ExpectedVersion::Any,
                    vec![encode(&event, id, "engine")],
                )
                .await
            {
                Ok(_) => break,
                Err(cit_store::Error::Closed) => return,
                Err(e) => {
                    tracing::warn!(cause = %e, anomaly = %a.id, "appending an anomaly failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
        if anomalies.raise(&a) {
            app.metrics.anomaly(a.kind.as_str());
            tracing::warn!(kind = a.kind.as_str(), run = %a.run_id, severity = a.severity.as_str(), at = a.at.0, summary = %a.summary, "anomaly raised");
        }
    }
}
