//! Denials are evidence: every UNAUTHENTICATED and PERMISSION_DENIED answer is counted in
//! metrics at once and recorded in the log as an `AccessDenied.v1` event per window (every
//! [`WINDOW`]), counted by principal, RPC, cause and peer. A window holds at most
//! [`MAX_ENTRIES`] distinct entries and counts the rest as `dropped`, so a flood of bad calls
//! costs one bounded event per window and a map insert per call, and cannot fill the disk or
//! hold up ingest (BENCHMARKS.md, "Denial flood").

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cit_domain::Millis;
use cit_domain::event::{DeniedCalls, Event};
use tonic::Code;

use super::Principal;
use super::layer::Denial;
use crate::metrics::{DenialLabels, Metrics};

/// How often a window of denials is written.
pub const WINDOW: Duration = Duration::from_secs(10);
/// Most distinct entries one window records.
pub const MAX_ENTRIES: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    principal: String,
    rpc: String,
    code: Code,
    cause: &'static str,
    peer: String,
}

#[derive(Debug, Default)]
struct Window {
    counts: HashMap<Key, u64>,
    dropped: u64,
}

/// The denials of the current window.
#[derive(Debug)]
pub struct Denials {
    metrics: Arc<Metrics>,
    window: Mutex<Window>,
}

fn code_name(code: Code) -> &'static str {
    match code {
        Code::Unauthenticated => "unauthenticated",
        Code::PermissionDenied => "permission_denied",
        Code::InvalidArgument => "invalid_argument",
        _ => "other",
    }
}

impl Denials {
    pub fn new(metrics: Arc<Metrics>) -> Denials {
        Denials {
            metrics,
            window: Mutex::new(Window::default()),
        }
    }

    /// Counts one denial (the layer's and the handlers' state-dependent ones alike).
    pub fn record(
        &self,
        principal: Option<&Principal>,
        rpc: &str,
        denial: &Denial,
        peer: Option<SocketAddr>,
    ) {
        self.metrics
            .denied
            .get_or_create(&DenialLabels {
                code: code_name(denial.code).into(),
                cause: denial.cause.into(),
            })
            .inc();
        tracing::debug!(principal = principal.map(|p| p.id.as_str()).unwrap_or(""), rpc, cause = denial.cause, reason = %denial.message, "call denied");
        let key = Key {
            principal: principal.map(|p| p.id.clone()).unwrap_or_default(),
            rpc: rpc.to_string(),
            code: denial.code,
            cause: denial.cause,
            peer: peer.map(|p| p.ip().to_string()).unwrap_or_default(),
        };
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        let full = w.counts.len() >= MAX_ENTRIES;
        match w.counts.get_mut(&key) {
            Some(n) => *n += 1,
            None if full => w.dropped += 1,
            None => {
                w.counts.insert(key, 1);
            }
        }
    }

    /// The window's record, if anything was denied in it, and a new window.
    pub fn take(&self, from: Millis, to: Millis) -> Option<Event> {
        let w = std::mem::take(&mut *self.window.lock().unwrap_or_else(|p| p.into_inner()));
        if w.counts.is_empty() {
            return None;
        }
        let mut calls: Vec<DeniedCalls> = w
            .counts
            .into_iter()
            .map(|(k, count)| DeniedCalls {
                principal: k.principal,
                rpc: k.rpc,
                code: code_name(k.code).into(),
                cause: k.cause.into(),
                peer: k.peer,
                count,
            })
            .collect();
        calls.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.rpc.cmp(&b.rpc)));
        Some(Event::AccessDenied {
            from,
            to,
            calls,
            dropped: w.dropped,
            at: to,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn denial(cause: &'static str) -> Denial {
        Denial {
            code: Code::Unauthenticated,
            cause,
            message: "no".into(),
        }
    }

    #[test]
    fn a_flood_is_one_bounded_record() {
        let d = Denials::new(Arc::new(Metrics::new()));
        for i in 0..100_000u32 {
            let peer: SocketAddr = format!("10.0.{}.{}:1", (i / 250) % 250, i % 250)
                .parse()
                .expect("addr");
            d.record(
                None,
                "/cit.v1.Dispatch/WatchFleet",
                &denial("no_credential"),
                Some(peer),
            );
        }
        let Some(Event::AccessDenied { calls, dropped, .. }) = d.take(Millis(0), Millis(10_000))
        else {
            panic!("a record");
        };
        assert_eq!(calls.len(), MAX_ENTRIES);
        assert_eq!(
            calls.iter().map(|c| c.count).sum::<u64>() + dropped,
            100_000
        );
        assert!(
            d.take(Millis(10_000), Millis(20_000)).is_none(),
            "the window was emptied"
        );
    }
}
