//! Configuration, layered: built-in defaults, then a TOML file (`--config` / `CIT_CONFIG`), then
//! environment variables (`CIT_*`), then command-line flags; `validate()` last. Every field is
//! documented in deploy/config-reference.md.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::auth::tls::TlsFiles;
use crate::auth::token::{KeyConfig, TokenConfig};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum ClockMode {
    /// The wall clock (production).
    Wall,
    /// Time follows the inputs (scenario replays, demos, tests).
    Scenario,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    /// The embedded durable store in `data_dir` (default, nothing to install).
    Embedded,
    /// A KurrentDB / EventStoreDB cluster at `kurrentdb_url`.
    Kurrentdb,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// gRPC address for every service.
    pub listen: SocketAddr,
    /// Prometheus `/metrics` address; none (`"off"` in the file) to disable.
    #[serde(deserialize_with = "de_address_or_off")]
    pub metrics_listen: Option<SocketAddr>,
    /// A second gRPC address, for the dispatch and audit consoles: the same services, served by
    /// a thread and runtime of its own, so a flood of telemetry on `listen` never queues a
    /// dispatcher's call behind it. None (`"off"` in the file): everything on `listen`.
    #[serde(deserialize_with = "de_address_or_off")]
    pub console_listen: Option<SocketAddr>,
    /// Where the embedded store keeps its file.
    pub data_dir: PathBuf,
    pub clock: ClockMode,
    pub store: StoreKind,
    /// e.g. `kurrentdb://admin:changeit@localhost:2113?tls=false`.
    pub kurrentdb_url: Option<String>,
    /// Page cache of the embedded store, MiB.
    pub cache_mb: usize,
    pub log_format: LogFormat,
    /// `tracing` filter, e.g. `info,cit_store=debug`.
    pub log_level: String,
    /// Re-announce a critical anomaly to watchers while it stays unacknowledged this long,
    /// seconds (0: never).
    pub reannounce_after_s: u64,
    /// How many changes a `WatchFleet` watcher may fall behind before it is told and resnapped.
    pub watch_buffer: usize,
    /// How often watchers get a batch of position updates, ms (0: every fix at once).
    pub watch_interval_ms: u64,
    /// Seconds between two snapshots of the engine and read models (also at shutdown), so a
    /// restart resumes from there; 0: no snapshots (a restart replays the log).
    pub snapshot_interval_s: u64,
    /// How far ahead of a vehicle's latest seq a fix may jump before it is rejected (`seq`).
    pub max_seq_jump: u64,
    /// The deployment's road map (GeoJSON lines), drawn under audit pictures; none: no roads.
    pub map: Option<PathBuf>,
    /// TLS (`[tls]`: `cert`, `key`, `client_ca`): required unless `insecure`. Read again on
    /// SIGHUP or when a file changes.
    pub tls: Option<TlsFiles>,
    /// Serve without TLS: loopback development only (refused on any other address), logged
    /// loudly at start and exposed as `cit_insecure` 1. Tokens are still required.
    pub insecure: bool,
    /// People's bearer tokens (`[tokens]`: `issuer`, `audience`, `[[tokens.keys]]`).
    pub tokens: TokenConfig,
    /// Ed25519 private key (PKCS#8 PEM) citd signs run heads with; keep it outside
    /// `data_dir`. None: no signatures (VerifyRun then says no head is covered).
    pub run_signing_key: Option<PathBuf>,
    /// The id recorded with each signature (rotate by a new key under a new id).
    pub run_signing_key_id: String,
    /// Seconds between two rounds of signing the heads of runs that moved.
    pub head_signing_interval_s: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            metrics_listen: Some(SocketAddr::from(([127, 0, 0, 1], 9464))),
            console_listen: None,
            data_dir: PathBuf::from("./cit-data"),
            clock: ClockMode::Wall,
            store: StoreKind::Embedded,
            kurrentdb_url: None,
            cache_mb: 256,
            log_format: LogFormat::Text,
            log_level: "info".into(),
            reannounce_after_s: 60,
            watch_buffer: 16_384,
            watch_interval_ms: 1000,
            snapshot_interval_s: 300,
            max_seq_jump: crate::app::MAX_SEQ_JUMP,
            map: None,
            tls: None,
            insecure: false,
            tokens: TokenConfig::default(),
            run_signing_key: None,
            run_signing_key_id: "run-1".into(),
            head_signing_interval_s: 60,
        }
    }
}

/// Flags; each also reads its `CIT_*` environment variable when absent.
#[derive(Debug, Default, clap::Args)]
pub struct Overrides {
    /// TOML configuration file.
    #[arg(long, env = "CIT_CONFIG")]
    pub config: Option<PathBuf>,
    /// gRPC listen address.
    #[arg(long, env = "CIT_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Prometheus metrics listen address ("off" to disable).
    #[arg(long, env = "CIT_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// gRPC address for the dispatch and audit consoles, served apart from telemetry ("off":
    /// none).
    #[arg(long, env = "CIT_CONSOLE_LISTEN")]
    pub console_listen: Option<String>,
    /// Data directory of the embedded store.
    #[arg(long, env = "CIT_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Wall clock, or scenario time that follows the inputs.
    #[arg(long, env = "CIT_CLOCK", value_enum)]
    pub clock: Option<ClockMode>,
    /// Event store backend.
    #[arg(long, env = "CIT_STORE", value_enum)]
    pub store: Option<StoreKind>,
    /// KurrentDB connection string (with --store kurrentdb).
    #[arg(long, env = "CIT_KURRENTDB_URL")]
    pub kurrentdb_url: Option<String>,
    /// Embedded store page cache, MiB.
    #[arg(long, env = "CIT_CACHE_MB")]
    pub cache_mb: Option<usize>,
    /// Log format.
    #[arg(long, env = "CIT_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Log filter (tracing EnvFilter syntax).
    #[arg(long, env = "CIT_LOG")]
    pub log_level: Option<String>,
    /// Seconds before an unacknowledged critical anomaly is announced again (0: never).
    #[arg(long, env = "CIT_REANNOUNCE_AFTER_S")]
    pub reannounce_after_s: Option<u64>,
    /// Changes a WatchFleet watcher may fall behind before it is told and resnapped.
    #[arg(long, env = "CIT_WATCH_BUFFER")]
    pub watch_buffer: Option<usize>,
    /// Least milliseconds between two position updates of one run to watchers (0: every fix).
    #[arg(long, env = "CIT_WATCH_INTERVAL_MS")]
    pub watch_interval_ms: Option<u64>,
    /// Seconds between engine snapshots (0: none; a restart replays the log).
    #[arg(long, env = "CIT_SNAPSHOT_INTERVAL_S")]
    pub snapshot_interval_s: Option<u64>,
    /// Most a fix's seq may jump ahead of its vehicle's latest before it is rejected.
    #[arg(long, env = "CIT_MAX_SEQ_JUMP")]
    pub max_seq_jump: Option<u64>,
    /// Road map to draw under audit pictures (GeoJSON LineStrings, e.g. an OpenStreetMap
    /// extract); nothing is fetched from a tile server.
    #[arg(long, env = "CIT_MAP")]
    pub map: Option<PathBuf>,
    /// citd's TLS certificate chain, PEM (with --tls-key).
    #[arg(long, env = "CIT_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// citd's TLS private key, PEM.
    #[arg(long, env = "CIT_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// CA certificates of units' and gateways' client certificates, PEM.
    #[arg(long, env = "CIT_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
    /// Serve without TLS (loopback development only).
    #[arg(long, env = "CIT_INSECURE")]
    pub insecure: bool,
    /// Ed25519 private key (PKCS#8 PEM) to sign run heads with, outside the data directory.
    #[arg(long, env = "CIT_RUN_SIGNING_KEY")]
    pub run_signing_key: Option<PathBuf>,
    /// A token verification key, `KID=PATH` (EdDSA public key, PEM); repeatable, added to the
    /// file's.
    #[arg(long = "token-key", env = "CIT_TOKEN_KEYS", value_delimiter = ',')]
    pub token_keys: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {reason}")]
    File { path: String, reason: String },
    #[error("invalid configuration: {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

impl Config {
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::File {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
    }

    /// Defaults, then the file, then environment and flags; validated.
    pub fn load(o: &Overrides) -> Result<Config, ConfigError> {
        let c = Config::merge(o)?;
        c.validate()?;
        Ok(c)
    }

    /// [`Config::load`] without the validation (the demo completes the configuration first).
    pub fn merge(o: &Overrides) -> Result<Config, ConfigError> {
        let mut c = match &o.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        if let Some(v) = o.listen {
            c.listen = v;
        }
        if let Some(v) = &o.metrics_listen {
            c.metrics_listen = address_or_off("metrics_listen", v)?;
        }
        if let Some(v) = &o.console_listen {
            c.console_listen = address_or_off("console_listen", v)?;
        }
        if let Some(v) = &o.data_dir {
            c.data_dir = v.clone();
        }
        if let Some(v) = o.clock {
            c.clock = v;
        }
        if let Some(v) = o.store {
            c.store = v;
        }
        if let Some(v) = &o.kurrentdb_url {
            c.kurrentdb_url = Some(v.clone());
        }
        if let Some(v) = o.cache_mb {
            c.cache_mb = v;
        }
        if let Some(v) = o.log_format {
            c.log_format = v;
        }
        if let Some(v) = &o.log_level {
            c.log_level = v.clone();
        }
        if let Some(v) = o.reannounce_after_s {
            c.reannounce_after_s = v;
        }
        if let Some(v) = o.watch_buffer {
            c.watch_buffer = v;
        }
        if let Some(v) = o.watch_interval_ms {
            c.watch_interval_ms = v;
        }
        if let Some(v) = o.snapshot_interval_s {
            c.snapshot_interval_s = v;
        }
        if let Some(v) = o.max_seq_jump {
            c.max_seq_jump = v;
        }
        if let Some(v) = &o.map {
            c.map = Some(v.clone());
        }
        match (&o.tls_cert, &o.tls_key) {
            (Some(cert), Some(key)) => {
                c.tls = Some(TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                    client_ca: o
                        .tls_client_ca
                        .clone()
                        .or_else(|| c.tls.as_ref().and_then(|t| t.client_ca.clone())),
                })
            }
            (None, None) => {
                if let (Some(ca), Some(t)) = (&o.tls_client_ca, c.tls.as_mut()) {
                    t.client_ca = Some(ca.clone());
                }
            }
            _ => {
                return Err(ConfigError::Invalid {
                    field: "tls",
                    reason: "--tls-cert and --tls-key go together".into(),
                });
            }
        }
        if o.insecure {
            c.insecure = true;
        }
        if let Some(k) = &o.run_signing_key {
            c.run_signing_key = Some(k.clone());
        }
        for k in &o.token_keys {
            let (kid, path) = k.split_once('=').ok_or_else(|| ConfigError::Invalid {
                field: "token_keys",
                reason: format!("{k:?}: expected KID=PATH"),
            })?;
            c.tokens.keys.push(KeyConfig {
                kid: kid.into(),
                alg: "EdDSA".into(),
                public_key: path.into(),
            });
        }
        Ok(c)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.store == StoreKind::Kurrentdb && self.kurrentdb_url.is_none() {
            return Err(ConfigError::Invalid {
                field: "kurrentdb_url",
                reason: "required with store = kurrentdb".into(),
            });
        }
        if self.cache_mb == 0 {
            return Err(ConfigError::Invalid {
                field: "cache_mb",
                reason: "must be > 0".into(),
            });
        }
        if !(16..=1 << 20).contains(&self.watch_buffer) {
            return Err(ConfigError::Invalid {
                field: "watch_buffer",
                reason: format!("must be 16 to 1048576, got {}", self.watch_buffer),
            });
        }
        validate_log_level(&self.log_level)?;
        if self.tls.is_none() && !self.insecure {
            return Err(ConfigError::Invalid {
                field: "tls",
                reason: "citd serves gRPC over TLS: configure [tls] cert and key (and client_ca for units), e.g. from `cit pki init DIR`, or --tls-cert/--tls-key; or pass --insecure for loopback development".into(),
            });
        }
        if self.insecure && !self.listen.ip().is_loopback() {
            return Err(ConfigError::Invalid {
                field: "insecure",
                reason: format!(
                    "--insecure serves without TLS and is for loopback development only; {} is not a loopback address",
                    self.listen
                ),
            });
        }
        if self.insecure
            && let Some(a) = self.console_listen
            && !a.ip().is_loopback()
        {
            return Err(ConfigError::Invalid {
                field: "insecure",
                reason: format!("--insecure: console_listen {a} is not a loopback address"),
            });
        }
        if self.head_signing_interval_s == 0 {
            return Err(ConfigError::Invalid {
                field: "head_signing_interval_s",
                reason: "must be >= 1".into(),
            });
        }
        if self.max_seq_jump == 0 {
            return Err(ConfigError::Invalid {
                field: "max_seq_jump",
                reason: "must be >= 1 (a unit's next fix has the next seq)".into(),
            });
        }
        if self.watch_interval_ms > 60_000 {
            return Err(ConfigError::Invalid {
                field: "watch_interval_ms",
                reason: format!("at most 60000, got {}", self.watch_interval_ms),
            });
        }
        if self.listen.port() != 0 && self.metrics_listen == Some(self.listen) {
            return Err(ConfigError::Invalid {
                field: "metrics_listen",
                reason: "must differ from listen".into(),
            });
        }
        if let Some(a) = self.console_listen
            && a.port() != 0
            && (a == self.listen || Some(a) == self.metrics_listen)
        {
            return Err(ConfigError::Invalid {
                field: "console_listen",
                reason: "must differ from listen and metrics_listen".into(),
            });
        }
        Ok(())
    }
}

/// A `tracing` filter: directives `level` or `target=level`, comma-separated. A bare word that is
/// no level (`verbose`) would parse as a target name and silence everything else, so it is
/// refused here rather than found out from an empty log.
fn validate_log_level(filter: &str) -> Result<(), ConfigError> {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    let invalid = |reason: String| ConfigError::Invalid {
        field: "log_level",
        reason,
    };
    for directive in filter.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let level = directive.rsplit('=').next().unwrap_or(directive);
        if !LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            return Err(invalid(format!(
                "{directive:?}: each directive is a level ({}) or target=level, e.g. \"info,cit_store=debug\"",
                LEVELS.join(", ")
            )));
        }
    }
    tracing_subscriber::EnvFilter::try_new(filter)
        .map(|_| ())
        .map_err(|e| invalid(format!("{filter:?}: {e}")))
}

/// An optional listen address in the file: an address, or "off" (as the flags take it).
fn de_address_or_off<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<SocketAddr>, D::Error> {
    let v = Option::<String>::deserialize(d)?;
    match v.as_deref() {
        None | Some("off") => Ok(None),
        Some(a) => a
            .parse()
            .map(Some)
            .map_err(|e| serde::de::Error::custom(format!("{a:?}: {e} (an address, or \"off\")"))),
    }
}

/// An optional listen address given as a flag: an address, or "off".
fn address_or_off(field: &'static str, v: &str) -> Result<Option<SocketAddr>, ConfigError> {
    if v == "off" {
        return Ok(None);
    }
    v.parse().map(Some).map_err(|e| ConfigError::Invalid {
        field,
        reason: format!("{v:?}: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("cit.toml");
        std::fs::write(
            &file,
            "data_dir = \"/var/lib/cit\"\nclock = \"scenario\"\ncache_mb = 64\n",
        )
        .expect("write");
        let o = Overrides {
            config: Some(file),
            cache_mb: Some(128),
            metrics_listen: Some("off".into()),
            insecure: true,
            ..Overrides::default()
        };
        let c = Config::load(&o).expect("valid");
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/cit"));
        assert_eq!(c.clock, ClockMode::Scenario);
        assert_eq!(c.cache_mb, 128);
        assert_eq!(c.metrics_listen, None);
        assert_eq!(c.listen, Config::default().listen);
    }

    #[test]
    fn invalid_configurations_name_the_field() {
        let o = Overrides {
            store: Some(StoreKind::Kurrentdb),
            insecure: true,
            ..Overrides::default()
        };
        let err = Config::load(&o).expect_err("needs a url");
        assert!(err.to_string().contains("kurrentdb_url"), "{err}");
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, "listen_port = 1\n").expect("write");
        let err = Config::from_file(&file).expect_err("unknown field");
        assert!(err.to_string().contains("listen_port"), "{err}");
        // "off" in the file as on the command line; a log level that is no level is refused
        // rather than silencing everything.
        std::fs::write(
            &file,
            "metrics_listen = \"off\"\nconsole_listen = \"127.0.0.1:50060\"\n",
        )
        .expect("write");
        let c = Config::from_file(&file).expect("off is a value");
        assert_eq!(c.metrics_listen, None);
        assert_eq!(c.console_listen, "127.0.0.1:50060".parse().ok());
        for level in ["verbose", "info,loud", "cit_store=chatty"] {
            let o = Overrides {
                log_level: Some(level.into()),
                insecure: true,
                ..Overrides::default()
            };
            let err = Config::load(&o).expect_err(level);
            assert!(err.to_string().contains("log_level"), "{level}: {err}");
        }
        for level in ["info", "warn,citd=debug", "cit_store=trace,info"] {
            let o = Overrides {
                log_level: Some(level.into()),
                insecure: true,
                ..Overrides::default()
            };
            assert!(Config::load(&o).is_ok(), "{level}");
        }
        for (console, why) in [
            ("127.0.0.1:50051", "the gRPC port"),
            ("nowhere", "no address"),
        ] {
            let o = Overrides {
                console_listen: Some(console.into()),
                insecure: true,
                ..Overrides::default()
            };
            let err = Config::load(&o).expect_err(why);
            assert!(err.to_string().contains("console_listen"), "{why}: {err}");
        }
        let o = Overrides {
            console_listen: Some("127.0.0.1:50053".into()),
            insecure: true,
            ..Overrides::default()
        };
        assert_eq!(
            Config::load(&o).expect("valid").console_listen,
            Some(SocketAddr::from(([127, 0, 0, 1], 50053)))
        );
    }

    #[test]
    fn without_tls_citd_refuses_to_start_unless_insecure_on_loopback() {
        let err = Config::load(&Overrides::default()).expect_err("no TLS");
        let text = err.to_string();
        assert!(
            text.contains("[tls]") && text.contains("--insecure"),
            "{text}"
        );
        let o = Overrides {
            insecure: true,
            listen: Some("0.0.0.0:50051".parse().expect("addr")),
            ..Overrides::default()
        };
        let err = Config::load(&o).expect_err("not on loopback");
        assert!(err.to_string().contains("loopback"), "{err}");
        let o = Overrides {
            tls_cert: Some("cert.pem".into()),
            ..Overrides::default()
        };
        let err = Config::load(&o).expect_err("a cert without its key");
        assert!(err.to_string().contains("--tls-key"), "{err}");
    }
}
