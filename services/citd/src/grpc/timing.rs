//! Server-side latency of every RPC, by method, into `cit_rpc_seconds`: from when the router
//! is handed the request (its HTTP/2 headers read) to when the response is ready (for a
//! streaming RPC, the start of the stream).
//!
//! Why: a client's figure includes its own queueing, the connection's and the network; this one
//! is the handlers' alone, so an operator can tell a slow citd from a slow path to it.

use std::collections::HashMap;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use futures::future::BoxFuture;
use prometheus_client::metrics::histogram::Histogram;
use prost::Message;
use tonic::codegen::http;

use crate::metrics::Metrics;

/// Each RPC's histogram by request path (`/cit.v1.Dispatch/GetRun`). Made once, from the
/// services' descriptors: no allocation per call, and a client cannot add labels.
type ByPath = Arc<HashMap<String, Histogram>>;

/// Wraps the whole router (`Server::builder().layer(..)`).
#[derive(Clone)]
pub struct TimingLayer {
    histograms: ByPath,
}

impl TimingLayer {
    pub fn new(metrics: &Metrics) -> TimingLayer {
        let mut histograms = HashMap::new();
        if let Ok(set) = prost_types::FileDescriptorSet::decode(cit_proto::FILE_DESCRIPTOR_SET) {
            for file in &set.file {
                for service in &file.service {
                    for method in &service.method {
                        let (package, service, method) =
                            (file.package(), service.name(), method.name());
                        histograms.insert(
                            format!("/{package}.{service}/{method}"),
                            metrics.rpc_histogram(&format!("{service}/{method}")),
                        );
                    }
                }
            }
        }
        TimingLayer {
            histograms: Arc::new(histograms),
        }
    }
}

impl<S> tower::Layer<S> for TimingLayer {
    type Service = Timed<S>;

    fn layer(&self, inner: S) -> Timed<S> {
        Timed {
            inner,
            histograms: self.histograms.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Timed<S> {
    inner: S,
    histograms: ByPath,
}

impl<S, B> tower::Service<http::Request<B>> for Timed<S>
where
    S: tower::Service<http::Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let started = Instant::now();
        // Health, reflection and unknown paths are not timed.
        let histogram = self.histograms.get(req.uri().path()).cloned();
        let answer = self.inner.call(req);
        Box::pin(async move {
            let r = answer.await;
            if let Some(h) = histogram {
                h.observe(started.elapsed().as_secs_f64());
            }
            r
        })
    }
}
