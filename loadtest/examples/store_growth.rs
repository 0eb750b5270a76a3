//! The embedded store's durable append rate as it grows, in citd's shape: thousands of streams
//! (one per active run), one event per append, thousands of appends in flight; the rate is
//! printed for each 250,000 events. It is what showed the per-commit stream index slowing the
//! store from 62k to 30k events/s (BENCHMARKS.md).
//!
//!     cargo run --release -p cit-loadtest --example store_growth -- 10000 2500000
//!
//! Arguments: streams (10,000), events (2,500,000). `INFLIGHT` sets the appends in flight (4,000)
//! and `INDEX_FLUSH` the store's `index_flush_events`.

use std::time::Instant;

use cit_store::embedded::{EmbeddedStore, Options};
use cit_store::{EventStore, ExpectedVersion, NewEvent};
use futures::stream::{FuturesUnordered, StreamExt};
use uuid::Uuid;

const STEP: usize = 250_000;

fn arg<T: std::str::FromStr>(value: Option<String>, default: T) -> T {
    value.and_then(|s| s.parse().ok()).unwrap_or(default)
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let streams: usize = arg(args.next(), 10_000);
    let total: usize = arg(args.next(), 2_500_000);
    let inflight_max: usize = arg(std::env::var("INFLIGHT").ok(), 4_000);
    let options = Options {
        index_flush_events: arg(
            std::env::var("INDEX_FLUSH").ok(),
            Options::default().index_flush_events,
        ),
        ..Options::default()
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path(), options).expect("open");
    let names: Vec<String> = (0..streams).map(|i| format!("run-R-{i:05}")).collect();
    let mut inflight = FuturesUnordered::new();
    let mut t = Instant::now();
    for i in 0..total {
        if inflight.len() >= inflight_max {
            inflight.next().await;
        }
        let (store, name) = (store.clone(), names[i % streams].clone());
        inflight.push(async move {
            let event = NewEvent {
                id: Uuid::now_v7(),
                event_type: "FixesRecorded.v1".into(),
                data: vec![b'x'; 150],
                metadata: b"{}".to_vec(),
            };
            store
                .append(&name, ExpectedVersion::Any, vec![event])
                .await
                .expect("append");
        });
        if (i + 1) % STEP == 0 {
            while inflight.next().await.is_some() {}
            println!(
                "{} events: {:.0} events/s",
                i + 1,
                STEP as f64 / t.elapsed().as_secs_f64()
            );
            t = Instant::now();
        }
    }
    while inflight.next().await.is_some() {}
}
