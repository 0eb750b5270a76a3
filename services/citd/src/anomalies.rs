//! The anomaly read model: every anomaly with its workflow state (open, acknowledged, resolved),
//! fed by the log, plus the engine's watermark so reads can wait for their own writes, and which
//! raised anomalies are not yet recorded in the log (dispatch hears of an anomaly before its
//! record is durable; commands about it wait for the record).

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, RwLock};
use std::time::Duration;

use cit_domain::Millis;
use cit_domain::event::{Anomaly, Event, Severity};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::error::AppError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    Open,
    Acknowledged,
    Resolved,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    pub anomaly: Anomaly,
    pub status: Status,
    pub acknowledged: Option<(String, Millis)>,
    pub resolved: Option<(String, Millis, String, String)>,
    /// When dispatch was last told of it and how many times (re-announcements of an
    /// unacknowledged critical anomaly count).
    pub announced: (Millis, u32),
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Book {
    order: Vec<String>,
    by_id: HashMap<String, Entry>,
    /// Ids per run in raise order: a run's view reads its own anomalies, not everyone's.
    by_run: HashMap<String, Vec<String>>,
}

/// Shared between the engine worker (writer) and the dispatch service (reader).
#[derive(Debug)]
pub struct Anomalies {
    book: RwLock<Book>,
    /// Log position up to which the engine has processed the log and its anomalies are here.
    pub engine_position: watch::Sender<u64>,
    /// Raised by the engine, their `AnomalyRaised` not yet durable. Never part of a snapshot:
    /// the engine snapshots only once this is empty.
    unrecorded: Mutex<HashSet<String>>,
    /// Bumped whenever an anomaly leaves `unrecorded`.
    recorded: watch::Sender<u64>,
}

impl Default for Anomalies {
    fn default() -> Self {
        Anomalies {
            book: RwLock::new(Book::default()),
            engine_position: watch::channel(0).0,
            unrecorded: Mutex::default(),
            recorded: watch::channel(0).0,
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
        book.by_run
            .entry(a.run_id.clone())
            .or_default()
            .push(a.id.clone());
        book.by_id.insert(
            a.id.clone(),
            Entry {
                anomaly: a.clone(),
                status: Status::Open,
                acknowledged: None,
                resolved: None,
                announced: (a.at, 1),
            },
        );
        true
    }

    /// Records an anomaly the engine has just raised, before its `AnomalyRaised` is durable; true
    /// if it is new. [`Anomalies::recorded`] follows once the record is durable.
    pub fn raise_unrecorded(&self, a: &Anomaly) -> bool {
        let mut unrecorded = self.unrecorded.lock().unwrap_or_else(|p| p.into_inner());
        let new = self.raise(a);
        if new {
            unrecorded.insert(a.id.clone());
        }
        new
    }

    /// The anomaly's `AnomalyRaised` is durable and known to the command side.
    pub fn recorded(&self, id: &str) {
        let was = self
            .unrecorded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        if was {
            self.recorded.send_modify(|n| *n += 1);
        }
    }

    /// Whether `done` holds of the unrecorded set, waiting at most `limit` for it to.
    async fn wait_recorded(
        &self,
        limit: Duration,
        done: impl Fn(&HashSet<String>) -> bool,
    ) -> bool {
        let holds = || done(&self.unrecorded.lock().unwrap_or_else(|p| p.into_inner()));
        let mut rx = self.recorded.subscribe();
        tokio::time::timeout(limit, rx.wait_for(|_| holds()))
            .await
            .is_ok()
    }

    /// Waits, at most `limit`, until the anomaly `id` (if the engine raised it) is recorded in
    /// the log, so a command about it (acknowledge, resolve) is decided and logged after it.
    pub async fn until_recorded(&self, id: &str, limit: Duration) -> Result<(), AppError> {
        if self.wait_recorded(limit, |u| !u.contains(id)).await {
            Ok(())
        } else {
            Err(AppError::Unavailable(format!(
                "anomaly {id:?} is not yet recorded in the log; retry"
            )))
        }
    }

    /// Waits, at most `limit`, until every anomaly raised so far is recorded in the log (the
    /// engine's snapshot may then cover them); false if some still are not.
    pub async fn until_all_recorded(&self, limit: Duration) -> bool {
        self.wait_recorded(limit, HashSet::is_empty).await
    }

    /// Folds workflow events in.
    pub fn apply(&self, e: &Event) {
        match e {
            Event::AnomalyRaised { anomaly, .. } => {
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
        let ids = match run_id {
            Some(r) => book.by_run.get(r).map(Vec::as_slice).unwrap_or_default(),
            None => book.order.as_slice(),
        };
        ids.iter()
            .filter_map(|id| book.by_id.get(id))
            .filter(|e| min_severity.is_none_or(|s| e.anomaly.severity >= s))
            .filter(|e| include_resolved || e.status != Status::Resolved)
            .cloned()
            .collect()
    }

    /// The most severe anomaly of a run not yet resolved.
    pub fn top_open_severity(&self, run_id: &str) -> Option<Severity> {
        let book = self.read();
        book.by_run
            .get(run_id)?
            .iter()
            .filter_map(|id| book.by_id.get(id))
            .filter(|e| e.status != Status::Resolved)
            .map(|e| e.anomaly.severity)
            .max()
    }

    /// The whole book, for a snapshot.
    pub fn export(&self) -> Book {
        self.read().clone()
    }

    /// Replaces the book with a snapshot's.
    pub fn import(&self, book: Book) {
        *self.write() = book;
    }

    /// One anomaly by id.
    pub fn get(&self, id: &str) -> Option<Entry> {
        self.read().by_id.get(id).cloned()
    }

    /// Critical anomalies still unacknowledged `after` since dispatch was last told of them:
    /// marked announced again at `now` and returned, to be announced again.
    pub fn due_again(&self, now: Millis, after_s: f64) -> Vec<Entry> {
        let mut book = self.write();
        let mut due = Vec::new();
        for e in book.by_id.values_mut() {
            if e.status == Status::Open
                && e.anomaly.severity == Severity::Critical
                && now.secs_since(e.announced.0) >= after_s
            {
                e.announced = (now, e.announced.1 + 1);
                due.push(e.clone());
            }
        }
        due.sort_by(|a, b| {
            a.anomaly
                .at
                .cmp(&b.anomaly.at)
                .then(a.anomaly.id.cmp(&b.anomaly.id))
        });
        due
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
