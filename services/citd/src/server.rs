//! Assembles and runs citd: the event store backend, the application core, the engine worker,
//! every gRPC service (plus health and reflection) on one port and, if configured, again on a
//! console port served by a thread of its own, and the metrics endpoint. `serve` takes its
//! listeners and a shutdown future, so tests and the scenario runner bind port 0.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cit_proto::v1::armory_server::ArmoryServer;
use cit_proto::v1::audit_server::AuditServer;
use cit_proto::v1::identity_server::IdentityServer;
use cit_proto::v1::police_liaison_server::PoliceLiaisonServer;
use cit_proto::v1::runs_server::RunsServer;
use cit_proto::v1::scenario_clock_server::ScenarioClockServer;
use cit_proto::v1::telemetry_server::TelemetryServer;
use cit_store::EventStore;
use cit_store::embedded::{EmbeddedStore, Options};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::anomalies::Anomalies;
use crate::app::App;
use crate::clock::Clock;
use crate::config::{ClockMode, Config, StoreKind};
use crate::grpc;
use crate::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("event store: {0}")]
    Store(String),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection: {0}")]
    Reflection(String),
    #[error("cannot start the detection engine's thread: {0}")]
    EngineThread(std::io::Error),
    #[error("cannot start the console port's thread: {0}")]
    ConsoleThread(std::io::Error),
    #[error("{0}")]
    Map(String),
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("tokens: {0}")]
    Tokens(String),
}

/// The router every gRPC port serves: all services behind the timing layer and, inside it,
/// the authentication and policy layer.
type Routes = tonic::transport::server::Router<
    tower::layer::util::Stack<
        crate::auth::layer::AuthLayer,
        tower::layer::util::Stack<grpc::timing::TimingLayer, tower::layer::util::Identity>,
    >,
>;

/// What `serve` listens on.
#[derive(Debug)]
pub struct Listeners {
    pub grpc: TcpListener,
    pub metrics: Option<TcpListener>,
    /// The consoles' port (see `Config::console_listen`).
    pub console: Option<TcpListener>,
}

/// Runs `work` on a thread of its own, with a single-threaded runtime: it gets its share of the
/// cores from the operating system instead of a turn on the shared tokio workers. The receiver
/// gets its output (an error if the runtime could not be built).
pub fn on_own_thread<T: Send + 'static>(
    name: &str,
    work: impl std::future::Future<Output = T> + Send + 'static,
) -> std::io::Result<tokio::sync::oneshot::Receiver<T>> {
    let (done, finished) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => {
                    let _ = done.send(rt.block_on(work));
                }
                Err(e) => {
                    tracing::error!(cause = %e, "cannot build the runtime of a worker thread")
                }
            }
        })?;
    Ok(finished)
}

/// Resolves once `rx` turns true (or its sender is gone).
pub async fn stopped(mut rx: tokio::sync::watch::Receiver<bool>) {
    while !*rx.borrow_and_update() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// How long in-flight calls may take to finish once shutdown begins.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Opens the configured event store.
pub async fn open_store(
    config: &Config,
    metrics: &Arc<Metrics>,
) -> Result<Arc<dyn EventStore>, ServerError> {
    match config.store {
        StoreKind::Embedded => {
            let m = metrics.clone();
            let store = EmbeddedStore::open(
                &config.data_dir,
                Options {
                    cache_bytes: config.cache_mb << 20,
                    on_commit: Some(Arc::new(move |s| m.observe_commit(&s))),
                    ..Options::default()
                },
            )
            .map_err(|e| ServerError::Store(e.to_string()))?;
            Ok(Arc::new(store))
        }
        StoreKind::Kurrentdb => {
            let url = config.kurrentdb_url.clone().unwrap_or_default();
            let store = cit_store_kurrentdb::KurrentStore::connect(&url)
                .map_err(|e| ServerError::Store(e.to_string()))?;
            Ok(Arc::new(store))
        }
    }
}

/// Announces again, every second, the critical anomalies left unacknowledged for
/// `after_s` (on the server's clock, so scenario time too): to watchers, the log and metrics.
async fn reannounce(
    app: Arc<App>,
    anomalies: Arc<Anomalies>,
    hub: Arc<crate::watch::Hub>,
    after_s: u64,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = every.tick() => {
                for e in anomalies.due_again(app.clock.now(), after_s as f64) {
                    app.metrics.anomalies_reannounced.inc();
                    tracing::warn!(anomaly = %e.anomaly.id, run = %e.anomaly.run_id, times = e.announced.1, summary = %e.anomaly.summary, "critical anomaly still unacknowledged");
                    hub.anomaly(grpc::anomaly_to_pb(&e));
                }
            }
        }
    }
}

/// Reads the TLS files and the token keys again on SIGHUP, and whenever one of their files
/// changes (checked every few seconds): certificates and keys rotate without a restart, and
/// open connections keep the configuration they were accepted with. A set that does not load
/// is logged and the one in force stays.
async fn reload_credentials(
    auth: Arc<crate::auth::layer::Auth>,
    tls: Option<Arc<crate::auth::tls::Reloadable>>,
    tokens: crate::auth::token::TokenConfig,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let stamps = |t: &crate::auth::token::TokenConfig| -> Vec<Option<std::time::SystemTime>> {
        t.keys
            .iter()
            .map(|k| {
                std::fs::metadata(&k.public_key)
                    .and_then(|m| m.modified())
                    .ok()
            })
            .collect()
    };
    let mut seen = stamps(&tokens);
    let mut every = tokio::time::interval(Duration::from_secs(2));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    tokio::pin!(shutdown);
    loop {
        #[cfg(unix)]
        let hangup = async {
            match hup.as_mut() {
                Some(h) => {
                    h.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let hangup = std::future::pending::<()>();
        let forced = tokio::select! {
            _ = &mut shutdown => return,
            _ = hangup => true,
            _ = every.tick() => false,
        };
        if let Some(tls) = &tls
            && (forced || tls.changed())
        {
            match tls.reload() {
                Ok(()) => tracing::info!("TLS certificates reloaded"),
                Err(e) => {
                    tracing::error!(cause = %e, "TLS reload failed; the certificates in force stay")
                }
            }
        }
        let now = stamps(&tokens);
        if forced || now != seen {
            seen = now;
            match crate::auth::token::Verifier::load(&tokens) {
                Ok(v) => {
                    tracing::info!(keys = v.key_count(), "token keys reloaded");
                    match auth.tokens.write() {
                        Ok(mut t) => *t = Arc::new(v),
                        Err(p) => *p.into_inner() = Arc::new(v),
                    }
                }
                Err(e) => {
                    tracing::error!(cause = %e, "token key reload failed; the keys in force stay")
                }
            }
        }
    }
}

/// Writes each window of denials to the log (see `auth::denials`), and the last at shutdown.
async fn record_denials(app: Arc<App>, shutdown: impl std::future::Future<Output = ()>) {
    let mut every = tokio::time::interval(crate::auth::denials::WINDOW);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    every.tick().await;
    let mut from = crate::clock::wall_now();
    tokio::pin!(shutdown);
    loop {
        let last = tokio::select! {
            _ = &mut shutdown => true,
            _ = every.tick() => false,
        };
        let to = crate::clock::wall_now();
        if let Some(event) = app.denials.take(from, to) {
            if let cit_domain::event::Event::AccessDenied { calls, dropped, .. } = &event {
                tracing::warn!(
                    entries = calls.len(),
                    calls = calls.iter().map(|c| c.count).sum::<u64>() + dropped,
                    "calls denied in the last window"
                );
            }
            if let Err(e) = app.append_own(&event, "auth").await {
                tracing::error!(cause = %e, "cannot record denied calls");
            }
        }
        from = to;
        if last {
            return;
        }
    }
}

/// A started server.
#[derive(Debug)]
pub struct Running {
    pub addr: SocketAddr,
    /// Whether the ports serve TLS (https) or, with `--insecure`, plain HTTP/2.
    pub tls: bool,
    pub metrics_addr: Option<SocketAddr>,
    pub console_addr: Option<SocketAddr>,
    shutdown: Option<oneshot::Sender<()>>,
    handle: tokio::task::JoinHandle<Result<(), ServerError>>,
}

impl Running {
    /// Graceful stop: in-flight calls finish, then the store is released.
    pub async fn stop(mut self) -> Result<(), ServerError> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.handle.await {
            Ok(r) => r,
            Err(e) => Err(ServerError::Store(format!("server task failed: {e}"))),
        }
    }

    pub fn endpoint(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }
}

/// Binds the configured addresses (port 0 allowed), opens the store and rebuilds the state, and
/// serves in the background. Returns once every listener is bound and the store is open and
/// caught up (health is SERVING from then on), or with the cause of the first failure, so a
/// store that cannot open fails the start instead of a server that never answers.
pub async fn start(config: Config) -> Result<Running, ServerError> {
    config.validate()?;
    let tls = config.tls.is_some();
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServerError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ServerError::Bind {
        addr: config.listen,
        source,
    })?;
    let metrics = bind_optional(config.metrics_listen).await?;
    let metrics_addr = metrics.as_ref().and_then(|l| l.local_addr().ok());
    let console = bind_optional(config.console_listen).await?;
    let console_addr = console.as_ref().and_then(|l| l.local_addr().ok());
    let (tx, rx) = oneshot::channel::<()>();
    let (ready_tx, ready) = oneshot::channel::<()>();
    let listeners = Listeners {
        grpc: listener,
        metrics,
        console,
    };
    let handle = tokio::spawn(async move {
        serve(
            config,
            listeners,
            async {
                let _ = rx.await;
            },
            Some(ready_tx),
        )
        .await
    });
    // The task either says it is ready or ends (dropping `ready`, a panic included).
    if ready.await.is_err() {
        return Err(match handle.await {
            Ok(Err(e)) => e,
            Ok(Ok(())) => ServerError::Store("stopped before it was ready".into()),
            Err(e) => ServerError::Store(format!("server task failed: {e}")),
        });
    }
    Ok(Running {
        addr,
        tls,
        metrics_addr,
        console_addr,
        shutdown: Some(tx),
        handle,
    })
}

async fn bind_optional(addr: Option<SocketAddr>) -> Result<Option<TcpListener>, ServerError> {
    match addr {
        Some(a) => TcpListener::bind(a)
            .await
            .map(Some)
            .map_err(|source| ServerError::Bind { addr: a, source }),
        None => Ok(None),
    }
}

/// What every gRPC port serves, shared by the ports.
struct Services {
    app: Arc<App>,
    auth: Arc<crate::auth::layer::Auth>,
    map: Option<Arc<crate::basemap::BaseMap>>,
    anomalies: Arc<Anomalies>,
    fleet: Arc<crate::fleet::Fleet>,
    hub: Arc<crate::watch::Hub>,
    stopping: tokio::sync::watch::Receiver<bool>,
}

impl Services {
    /// One port's router (routers are not `Clone`; their services are cheap handles).
    async fn routes(&self) -> Result<Routes, ServerError> {
        // Routes are built once the store is open and the state rebuilt: every service answers
        // SERVING from the first call the port takes.
        let (health, health_service) = tonic_health::server::health_reporter();
        let mut services = vec![
            "cit.v1.Telemetry",
            "cit.v1.Runs",
            "cit.v1.Armory",
            "cit.v1.PoliceLiaison",
            "cit.v1.Dispatch",
            "cit.v1.Audit",
            "cit.v1.Identity",
        ];
        if self.app.clock.is_scenario() {
            services.push("cit.v1.ScenarioClock");
        }
        for name in services {
            health
                .set_service_status(name, tonic_health::ServingStatus::Serving)
                .await;
        }
        // Both reflection versions: grpcurl and most tools ask v1, some clients still v1alpha.
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(cit_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let reflection_v1 = reflection()
            .build_v1()
            .map_err(|e| ServerError::Reflection(e.to_string()))?;
        let reflection_v1alpha = reflection()
            .build_v1alpha()
            .map_err(|e| ServerError::Reflection(e.to_string()))?;
        let max = grpc::telemetry::MAX_MESSAGE_BYTES;
        let clock_service = self.app.clock.is_scenario().then(|| {
            ScenarioClockServer::new(grpc::clock::ClockService {
                app: self.app.clone(),
            })
        });
        let router = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .layer(grpc::timing::TimingLayer::new(&self.app.metrics))
            .layer(crate::auth::layer::AuthLayer::new(self.auth.clone()))
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(
                TelemetryServer::new(grpc::telemetry::TelemetryService {
                    app: self.app.clone(),
                    stopping: self.stopping.clone(),
                })
                .max_decoding_message_size(max),
            )
            .add_service(RunsServer::new(grpc::runs::RunsService {
                app: self.app.clone(),
            }))
            .add_service(ArmoryServer::new(grpc::armory::ArmoryService {
                app: self.app.clone(),
            }))
            .add_service(PoliceLiaisonServer::new(grpc::liaison::LiaisonService {
                app: self.app.clone(),
            }))
            .add_service(grpc::dispatch::DispatchRoutes::new(
                grpc::dispatch::DispatchService {
                    app: self.app.clone(),
                    anomalies: self.anomalies.clone(),
                    fleet: self.fleet.clone(),
                    hub: self.hub.clone(),
                    stopping: self.stopping.clone(),
                },
            ))
            .add_service(IdentityServer::new(grpc::identity::IdentityService {
                app: self.app.clone(),
            }))
            .add_service(AuditServer::new(grpc::audit::AuditService {
                app: self.app.clone(),
                map: self.map.clone(),
            }))
            .add_optional_service(clock_service);
        Ok(router)
    }
}

/// Runs until `shutdown` resolves. `ready` is told once the store is open, the state rebuilt
/// and the routes built, just before the ports start answering; a failure before that ends
/// the call with its cause (and `ready` is dropped untold).
pub async fn serve(
    config: Config,
    listeners: Listeners,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ready: Option<oneshot::Sender<()>>,
) -> Result<(), ServerError> {
    let Listeners {
        grpc: listener,
        metrics: metrics_listener,
        console: console_listener,
    } = listeners;
    config.validate()?;
    // Credentials next: a bad key or certificate fails the start before the store is opened.
    let verifier =
        crate::auth::token::Verifier::load(&config.tokens).map_err(ServerError::Tokens)?;
    let tls = match &config.tls {
        Some(files) => Some(Arc::new(
            crate::auth::tls::Reloadable::load(files.clone()).map_err(ServerError::Tls)?,
        )),
        None => None,
    };
    let head_signer = match &config.run_signing_key {
        Some(path) => {
            if path.starts_with(&config.data_dir) {
                tracing::warn!(key = %path.display(), "the run signing key is inside the data directory: whoever can rewrite the record can also sign it; keep it elsewhere");
            }
            Some(
                crate::heads::HeadSigner::load(path, &config.run_signing_key_id)
                    .map_err(ServerError::Tls)?,
            )
        }
        None => None,
    };
    // The map first: a bad file fails the start before the store is opened.
    let map = match &config.map {
        Some(path) => Some(Arc::new(
            crate::basemap::BaseMap::load(path).map_err(ServerError::Map)?,
        )),
        None => None,
    };
    let metrics = Arc::new(Metrics::new());
    let store = open_store(&config, &metrics).await?;
    let clock = match config.clock {
        ClockMode::Wall => Clock::Wall,
        ClockMode::Scenario => Clock::scenario(),
    };
    let snapshot = match config.snapshot_interval_s {
        0 => None,
        _ => crate::engine_worker::load(store.as_ref(), &config.data_dir).await,
    };
    let from = snapshot.as_ref().map(|s| (s.position, s.commands.clone()));
    let app = App::open(store.clone(), clock, metrics.clone(), from)
        .await
        .map_err(|e| ServerError::Store(e.to_string()))?;
    app.max_seq_jump
        .store(config.max_seq_jump, std::sync::atomic::Ordering::Relaxed);
    let anomalies = Arc::new(Anomalies::default());
    let fleet = Arc::new(crate::fleet::Fleet::default());
    let hub = Arc::new(crate::watch::Hub::new(
        config.watch_buffer,
        Duration::from_millis(config.watch_interval_ms),
    ));

    // Set when shutdown begins; the engine, the metrics server and open fix streams follow it.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    let snapshots = (config.snapshot_interval_s > 0).then(|| crate::engine_worker::Snapshots {
        dir: config.data_dir.clone(),
        every: Duration::from_secs(config.snapshot_interval_s),
    });
    let start = crate::engine_worker::resume(&anomalies, &fleet, snapshot);
    // The engine worker is one sequential consumer of the log that may work a millisecond
    // between two awaits (a hundred events' detection, read models and publishing); on the
    // shared workers the queries queued behind it (GetRun) waited for that.
    let engine = on_own_thread(
        "cit-engine",
        crate::engine_worker::run(
            app.clone(),
            anomalies.clone(),
            fleet.clone(),
            hub.clone(),
            snapshots,
            start,
            stopped(stop_rx.clone()),
        ),
    )
    .map_err(ServerError::EngineThread)?;
    if config.reannounce_after_s > 0 {
        tokio::spawn(reannounce(
            app.clone(),
            anomalies.clone(),
            hub.clone(),
            config.reannounce_after_s,
            stopped(stop_rx.clone()),
        ));
    }
    if let Some(l) = metrics_listener {
        let m = metrics.clone();
        let router = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let m = m.clone();
                async move { m.render() }
            }),
        );
        let rx = stop_rx.clone();
        tokio::spawn(async move {
            if let Err(e) = axum::serve(l, router)
                .with_graceful_shutdown(stopped(rx))
                .await
            {
                tracing::error!(cause = %e, "metrics server failed");
            }
        });
    }

    if config.insecure {
        metrics.insecure.set(1);
        tracing::warn!(addr = %config.listen, "INSECURE: serving gRPC WITHOUT TLS (--insecure); tokens travel in clear text; for loopback development only");
    }
    if verifier.key_count() == 0 {
        tracing::warn!(
            "no token verification keys configured ([tokens] keys, --token-key): no person can authenticate"
        );
    }
    let auth = Arc::new(crate::auth::layer::Auth {
        policy: crate::auth::policy::Policy::default(),
        tokens: std::sync::RwLock::new(Arc::new(verifier)),
        app: app.clone(),
        insecure: config.insecure,
    });
    tokio::spawn(reload_credentials(
        auth.clone(),
        tls.clone(),
        config.tokens.clone(),
        stopped(stop_rx.clone()),
    ));
    tokio::spawn(record_denials(app.clone(), stopped(stop_rx.clone())));
    if let Some(signer) = head_signer {
        let signer = Arc::new(signer);
        let _ = app.head_signer.set(signer.clone());
        tokio::spawn(crate::heads::sign_periodically(
            app.clone(),
            signer,
            Duration::from_secs(config.head_signing_interval_s),
            stopped(stop_rx.clone()),
        ));
    }
    let services = Services {
        auth,
        app: app.clone(),
        map,
        anomalies: anomalies.clone(),
        fleet: fleet.clone(),
        hub: hub.clone(),
        stopping: stop_rx.clone(),
    };
    let router = services.routes().await?;
    // The consoles' port: the same services on a thread and runtime of their own. A GetRun
    // there is not queued behind the telemetry's tasks on the shared workers (p99 under 50,000
    // fixes/s, a call a millisecond: 4.0-4.2 ms on the shared port, 2.8-3.6 ms here;
    // BENCHMARKS.md).
    let console = match console_listener {
        Some(l) => {
            let routes = services.routes().await?;
            let l = l.into_std().map_err(ServerError::ConsoleThread)?;
            let stop = stop_rx.clone();
            let console_tls = tls
                .clone()
                .map(|t| (t, metrics.tls_handshakes_failed.clone()));
            let done = on_own_thread("cit-console", async move {
                let l = TcpListener::from_std(l)?;
                tracing::info!(addr = %l.local_addr()?, "console port serving");
                match console_tls {
                    Some((tls, failed)) => routes
                        .serve_with_incoming_shutdown(
                            crate::auth::tls::incoming(l, tls, failed),
                            stopped(stop),
                        )
                        .await
                        .map_err(std::io::Error::other),
                    None => {
                        let incoming =
                            tonic::transport::server::TcpIncoming::from(l).with_nodelay(Some(true));
                        routes
                            .serve_with_incoming_shutdown(incoming, stopped(stop))
                            .await
                            .map_err(std::io::Error::other)
                    }
                }
            })
            .map_err(ServerError::ConsoleThread)?;
            Some(done)
        }
        None => None,
    };
    tracing::info!(
        addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        clock = ?config.clock,
        store = ?config.store,
        "citd serving"
    );
    if let Some(ready) = ready {
        let _ = ready.send(());
    }
    let begin_stop = stop_tx.clone();
    // No Nagle on accepted connections: a small response (GetRun) must not wait ~40 ms for the
    // client's delayed ACK (measured: GetRun p99 44 ms before, BENCHMARKS.md).
    let until = async move {
        shutdown.await;
        let _ = begin_stop.send(true);
    };
    let serving: std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<(), tonic::transport::Error>> + Send>,
    > = match tls {
        Some(tls) => Box::pin(router.serve_with_incoming_shutdown(
            crate::auth::tls::incoming(listener, tls, metrics.tls_handshakes_failed.clone()),
            until,
        )),
        None => Box::pin(router.serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            until,
        )),
    };
    tokio::pin!(serving);
    let grace = stop_rx.clone();
    let result = tokio::select! {
        r = &mut serving => r,
        _ = async {
            stopped(grace).await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => {
            tracing::warn!(grace_s = SHUTDOWN_GRACE.as_secs(), "connections still open after the grace period; closing them");
            Ok(())
        }
    };
    let _ = stop_tx.send(true);
    if let Some(done) = console {
        match tokio::time::timeout(SHUTDOWN_GRACE, done).await {
            Ok(Ok(Err(e))) => tracing::error!(cause = %e, "console port failed"),
            Err(_) => tracing::warn!("console connections still open after the grace period"),
            _ => {}
        }
    }
    let _ = engine.await;
    drop(app);
    store.close().await;
    tracing::info!("citd stopped");
    result.map_err(ServerError::from)
}
