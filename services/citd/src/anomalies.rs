//! The anomaly read model: every anomaly with its workflow state (open, acknowledged, resolved),
//! fed by the log, plus the engine's watermark so reads can wait for their own writes.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::Duration;

use cit_domain::Millis;
use cit_domain::event::{Anomaly, Event, Severity};
use tokio::sync::watch;

use crate::error::AppError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Open,
    Acknowledged,
    Resolved,
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub anomaly: Anomaly,
    pub status: Status,
    pub acknowledged: Option<(String, Millis)>,
    pub resolved: Option<(String, Millis, String, String)>,
}

#[derive(Debug, Default)]
struct Book {
    order: Vec<String>,
    by_id: HashMap<String, Entry>,
}

/// Shared between the engine worker (writer) and the dispatch service (reader).
#[derive(Debug)]
pub struct Anomalies {
    book: RwLock<Book>,
    /// Log position up to which the engine has processed the log and its anomalies are here.
    pub engine_position: watch::Sender<u64>,
}

impl Default for Anomalies {
    fn default() -> Self {
        Anomalies {
            book: RwLock::new(Book::default()),
            engine_position: watch::channel(0).0,
        }
    }
}

impl Anomalies {
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Book> {
        self.book.write().unwrap_or_else(|p| p.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Book> {
        self.book.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Records an anomaly once (by id).
    pub fn raise(&self, a: &Anomaly) -> bool {
        let mut book = self.write();
        if book.by_id.contains_key(&a.id) {
            return false;
        }
        book.order.push(a.id.clone());
        book.by_id.insert(
            a.id.clone(),
            Entry {
                anomaly: a.clone(),
                status: Status::Open,
                acknowledged: None,
                resolved: None,
            },
        );
        true
    }

    /// Folds workflow events in.
    pub fn apply(&self, e: &Event) {
        match e {
            Event::AnomalyRaised { anomaly } => {
                self.raise(anomaly);
            }
            Event::AnomalyAcknowledged {
                anomaly_id, by, at, ..
            } => {
                let mut book = self.write();
                if let Some(entry) = book.by_id.get_mut(anomaly_id) {
                    entry.acknowledged = Some((by.clone(), *at));
                    if entry.status == Status::Open {
                        entry.status = Status::Acknowledged;
                    }
                }
            }
            Event::AnomalyResolved {
                anomaly_id,
                by,
                outcome,
                note,
                at,
                ..
            } => {
                let mut book = self.write();
                if let Some(entry) = book.by_id.get_mut(anomaly_id) {
                    entry.resolved = Some((by.clone(), *at, outcome.clone(), note.clone()));
                    entry.status = Status::Resolved;
                }
            }
            _ => {}
        }
    }

    pub fn list(
        &self,
        run_id: Option<&str>,
        min_severity: Option<Severity>,
        include_resolved: bool,
    ) -> Vec<Entry> {
        let book = self.read();
        book.order
            .iter()
            .filter_map(|id| book.by_id.get(id))
            .filter(|e| run_id.is_none_or(|r| e.anomaly.run_id == r))
            .filter(|e| min_severity.is_none_or(|s| e.anomaly.severity >= s))
            .filter(|e| include_resolved || e.status != Status::Resolved)
            .cloned()
            .collect()
    }

    /// Waits until the engine has processed `position` (at most `limit`).
    pub async fn wait_for(&self, position: u64, limit: Duration) -> Result<u64, AppError> {
        let mut rx = self.engine_position.subscribe();
        let waited = tokio::time::timeout(limit, rx.wait_for(|p| *p >= position)).await;
        match waited {
            Ok(Ok(p)) => Ok(*p),
            Ok(Err(_)) => Err(AppError::Unavailable("the detection engine stopped".into())),
            Err(_) => Err(AppError::Timeout(format!(
                "the detection engine has not reached log position {position} within {} s",
                limit.as_secs()
            ))),
        }
    }
}
