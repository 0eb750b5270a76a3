//! A client's credentials: the CA it trusts citd's certificate by, the client certificate a
//! gateway or unit presents, and the bearer tokens people call with (fixed, or minted per
//! person by a local signing key: the scenario runner, the demo and the tests act as many
//! people). Used by the runner, `cit` and the tests; citd's own side is [`crate::auth`].

use std::path::Path;
use std::sync::Arc;

use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::auth::devpki::{self, DevPki};
use crate::auth::token::Signer;
use crate::auth::{Kind, layer::COSIGN};

/// How long a minted token lives: long enough for a paced demo, short enough to be worthless
/// soon after.
pub const MINTED_TTL_S: u64 = 4 * 3600;

/// What a client presents.
#[derive(Debug, Default)]
pub struct Credentials {
    /// Trust citd's certificate by this CA (PEM); None: plain HTTP/2 (`citd --insecure`).
    pub ca: Option<Vec<u8>>,
    /// The client certificate and key (PEM) the connection presents: a gateway's, for fixes.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// The gateway `identity` names.
    pub gateway_id: Option<String>,
    /// Mints people's tokens.
    pub signer: Option<Arc<Signer>>,
    /// The token calls carry by default (`cit --token`), when no signer mints one.
    pub token: Option<String>,
    /// Whom calls speak for by default, with the signer: id and roles.
    pub default_person: Option<(String, Vec<String>)>,
    /// The token fixes go with to a citd serving `--insecure` (no client certificates there).
    pub unit_token: Option<String>,
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// The gateway the runner and the demo send fixes as.
pub const SCENARIO_GATEWAY: &str = "scenario-gateway";

impl Credentials {
    /// Credentials from a development PKI directory (`cit pki init`): its CA, the scenario
    /// gateway's certificate (made if missing) and its token signing key.
    pub fn from_pki_dir(dir: &Path) -> Result<Credentials, String> {
        let cert = dir.join(format!("gateway-{SCENARIO_GATEWAY}.pem"));
        if !cert.exists() {
            devpki::issue_client(dir, Kind::Gateway, SCENARIO_GATEWAY)?;
        }
        let key_path = dir.join(format!("token-{}.key.pem", devpki::DEV_KID));
        let signer = Signer::from_pem(devpki::DEV_KID, &read(&key_path)?, "cit-local", "cit")?;
        Ok(Credentials {
            ca: Some(read(&dir.join("ca.pem"))?),
            identity: Some((
                read(&cert)?,
                read(&dir.join(format!("gateway-{SCENARIO_GATEWAY}.key.pem")))?,
            )),
            gateway_id: Some(SCENARIO_GATEWAY.into()),
            signer: Some(Arc::new(signer)),
            token: None,
            default_person: None,
            unit_token: None,
        })
    }

    pub fn from_pki(pki: &DevPki) -> Result<Credentials, String> {
        Credentials::from_pki_dir(&pki.dir)
    }

    /// The same, speaking for `person` with `roles` by default.
    pub fn speaking_for(mut self, person: &str, roles: &[&str]) -> Credentials {
        self.default_person = Some((person.into(), roles.iter().map(|r| r.to_string()).collect()));
        self
    }

    /// For a citd serving `--insecure`: no TLS, and fixes go with a gateway token instead of
    /// the gateway's certificate.
    pub fn insecure_units(&mut self) {
        self.ca = None;
        self.identity = None;
        if let Some(g) = &self.gateway_id {
            self.unit_token = self.mint(g, &["gateway"]);
        }
    }

    /// A token for `person` with `roles` (None without a signer).
    pub fn mint(&self, person: &str, roles: &[&str]) -> Option<String> {
        self.signer
            .as_ref()
            .map(|s| s.mint(person, roles, MINTED_TTL_S))
    }

    pub fn default_token(&self) -> Option<String> {
        match (&self.default_person, &self.token) {
            (Some((p, roles)), _) => {
                let roles: Vec<&str> = roles.iter().map(String::as_str).collect();
                self.mint(p, &roles)
            }
            (None, t) => t.clone(),
        }
    }

    /// The scheme citd is reached by with these credentials.
    pub fn scheme(&self) -> &'static str {
        if self.ca.is_some() { "https" } else { "http" }
    }

    /// An endpoint for `uri` (`http(s)://`) with these credentials' TLS, to tune and connect.
    pub fn endpoint(&self, uri: &str) -> Result<Endpoint, String> {
        let mut ep = Channel::from_shared(uri.to_string()).map_err(|e| e.to_string())?;
        if let Some(ca) = &self.ca {
            let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
            if let Some((cert, key)) = &self.identity {
                tls = tls.identity(Identity::from_pem(cert, key));
            }
            ep = ep.tls_config(tls).map_err(|e| e.to_string())?;
        }
        Ok(ep)
    }

    /// A channel to `uri` with these credentials' TLS.
    pub async fn channel(&self, uri: &str) -> Result<Channel, String> {
        self.endpoint(uri)?.connect().await.map_err(|e| {
            let mut s = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(inner) = src {
                s = format!("{s}: {inner}");
                src = inner.source();
            }
            s
        })
    }
}

/// Adds a call's bearer token and co-signers' tokens.
#[derive(Debug, Clone, Default)]
pub struct Bearer {
    token: Option<AsciiMetadataValue>,
    cosign: Arc<Vec<AsciiMetadataValue>>,
}

impl Bearer {
    pub fn new(token: Option<&str>, cosign: &[String]) -> Bearer {
        Bearer {
            token: token.and_then(|t| MetadataValue::try_from(format!("Bearer {t}")).ok()),
            cosign: Arc::new(
                cosign
                    .iter()
                    .filter_map(|t| MetadataValue::try_from(t.as_str()).ok())
                    .collect(),
            ),
        }
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(t) = &self.token {
            req.metadata_mut().insert("authorization", t.clone());
        }
        for c in self.cosign.iter() {
            req.metadata_mut().append(COSIGN, c.clone());
        }
        Ok(req)
    }
}

/// A private citd's configuration (scenario clock, port 0 on loopback, no metrics port, store
/// in `dir`) with TLS and tokens from a throwaway development PKI in `dir/pki`, and the
/// credentials to call it with: the runner's, the demo's and the tests' citd.
pub fn private_server(dir: &Path) -> Result<(crate::config::Config, Credentials), String> {
    let pki = devpki::generate(&dir.join("pki"))?;
    let config = crate::config::Config {
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        metrics_listen: None,
        data_dir: dir.to_path_buf(),
        clock: crate::config::ClockMode::Scenario,
        tls: Some(crate::auth::tls::TlsFiles {
            cert: pki.server_cert.clone(),
            key: pki.server_key.clone(),
            client_ca: Some(pki.ca.clone()),
        }),
        tokens: crate::auth::token::TokenConfig {
            keys: vec![pki.token_key.clone()],
            ..Default::default()
        },
        run_signing_key: Some(pki.run_signing_key.clone()),
        ..crate::config::Config::default()
    };
    Ok((config, Credentials::from_pki(&pki)?))
}

/// How a command-line client reaches citd and proves who it is.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectArgs {
    /// citd address (`host:port`, or a URI).
    #[arg(
        long,
        global = true,
        default_value = "127.0.0.1:50051",
        env = "CIT_ADDR"
    )]
    pub addr: String,
    /// A development PKI directory (`cit pki init`): its CA is trusted, its gateway sends
    /// fixes and its signing key mints the tokens of the people acting.
    #[arg(long, global = true, env = "CIT_PKI")]
    pub pki: Option<std::path::PathBuf>,
    /// CA certificate(s) to trust citd's certificate by, PEM (without --pki).
    #[arg(long, global = true, env = "CIT_CA")]
    pub ca: Option<std::path::PathBuf>,
    /// Bearer token to call with (without --pki); read from the environment rather than
    /// typed, so it stays out of shell history.
    #[arg(long, global = true, env = "CIT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Plain HTTP/2, for a citd started with --insecure.
    #[arg(long, global = true)]
    pub insecure: bool,
}

impl ConnectArgs {
    /// The credentials these flags name; with --pki, speaking for `person` with `roles`.
    pub fn credentials(&self, person: &str, roles: &[&str]) -> Result<Credentials, String> {
        let mut c = match &self.pki {
            Some(dir) => Credentials::from_pki_dir(dir)?.speaking_for(person, roles),
            None => Credentials::default(),
        };
        if let Some(ca) = &self.ca {
            c.ca = Some(read(ca)?);
        }
        if let Some(t) = &self.token {
            c.token = Some(t.clone());
            c.default_person = None;
        }
        if self.insecure {
            c.insecure_units();
        } else if c.ca.is_none() {
            return Err(
                "citd serves TLS: name its CA with --ca (or a development PKI with --pki), or pass --insecure for a citd started with --insecure".into(),
            );
        }
        Ok(c)
    }
}
