//! The one place every call of `cit.v1` is authenticated and checked against the policy: a
//! tower layer around the whole router (a tonic interceptor cannot see the method). It puts the
//! [`Caller`] in the request's extensions for the handlers, and answers UNAUTHENTICATED or
//! PERMISSION_DENIED itself, counted and recorded (see [`super::denials`]).

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use futures::future::{Either, Ready};
use tonic::codegen::http;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::{Code, Status};

use super::policy::Policy;
use super::token::Verifier;
use super::{Caller, Principal, tls};
use crate::app::App;

/// Metadata key of a co-signer's token (two-person rules); one value per co-signer.
pub const COSIGN: &str = "cit-cosign";
/// Most co-signers one call may carry.
pub const MAX_COSIGNERS: usize = 4;

/// What the layer needs, shared by every port.
pub struct Auth {
    pub policy: Policy,
    /// Swapped whole on reload.
    pub tokens: RwLock<Arc<Verifier>>,
    pub app: Arc<App>,
    /// Serving `--insecure`: no client certificates, so units may use tokens (loopback only).
    pub insecure: bool,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth").finish_non_exhaustive()
    }
}

/// Why a call was not let through: its status code and a reason for the caller, plus the
/// short cause it is counted and recorded under.
#[derive(Debug)]
pub struct Denial {
    pub code: Code,
    pub cause: &'static str,
    pub message: String,
}

impl Denial {
    fn unauthenticated(cause: &'static str, message: impl Into<String>) -> Denial {
        Denial {
            code: Code::Unauthenticated,
            cause,
            message: message.into(),
        }
    }
}

impl Auth {
    pub fn verifier(&self) -> Arc<Verifier> {
        match self.tokens.read() {
            Ok(v) => v.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Who presents these headers on this connection: a bearer token speaks for a person; a
    /// client certificate, without one, for a unit or gateway. None: anonymous.
    fn authenticate(
        &self,
        headers: &http::HeaderMap,
        certs: Option<&[rustls::pki_types::CertificateDer<'static>]>,
    ) -> Result<Option<Principal>, Denial> {
        if let Some(value) = headers.get(http::header::AUTHORIZATION) {
            let token = value
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer "))
                .ok_or_else(|| {
                    Denial::unauthenticated(
                        "malformed_authorization",
                        "the authorization header is not `Bearer <token>`",
                    )
                })?;
            return self
                .verifier()
                .verify_as(token.trim(), self.insecure)
                .map(Some)
                .map_err(|e| Denial::unauthenticated("bad_token", e.to_string()));
        }
        let Some(cert) = certs.and_then(|c| c.first()) else {
            return Ok(None);
        };
        let unit =
            tls::principal_of(cert).map_err(|e| Denial::unauthenticated("bad_certificate", e))?;
        let disabled = self
            .app
            .with_units(|units| units.get(&unit.id).map(|u| u.disabled));
        if disabled == Some(true) {
            return Err(Denial::unauthenticated(
                "unit_disabled",
                format!("unit {:?} is disabled", unit.id),
            ));
        }
        Ok(Some(unit))
    }

    fn cosigners(&self, headers: &http::HeaderMap) -> Result<Vec<Principal>, Denial> {
        let values = headers.get_all(COSIGN);
        let mut out = Vec::new();
        for (i, v) in values.iter().enumerate() {
            if i == MAX_COSIGNERS {
                return Err(Denial {
                    code: Code::InvalidArgument,
                    cause: "too_many_cosigners",
                    message: format!("at most {MAX_COSIGNERS} {COSIGN} tokens"),
                });
            }
            let p = v
                .to_str()
                .map_err(|_| {
                    Denial::unauthenticated("bad_cosigner", "a co-signer token is not text")
                })
                .and_then(|t| {
                    self.verifier().verify(t.trim()).map_err(|e| {
                        Denial::unauthenticated(
                            "bad_cosigner",
                            format!("co-signer token {}: {e}", i + 1),
                        )
                    })
                })?;
            out.push(p);
        }
        Ok(out)
    }

    /// Authenticates and authorizes one call of `path`.
    pub fn admit(
        &self,
        path: &str,
        headers: &http::HeaderMap,
        certs: Option<&[rustls::pki_types::CertificateDer<'static>]>,
    ) -> Result<Caller, (Option<Principal>, Denial)> {
        let principal = self.authenticate(headers, certs).map_err(|d| (None, d))?;
        let Some(allowed) = self.policy.allowed(path) else {
            return Err((
                principal,
                Denial {
                    code: Code::PermissionDenied,
                    cause: "no_policy",
                    message: format!("{path} has no access policy: denied to everyone"),
                },
            ));
        };
        let Some(principal) = principal else {
            return Err((
                None,
                Denial::unauthenticated(
                    "no_credential",
                    "this call needs a credential: a bearer token (people) or a client certificate (units)",
                ),
            ));
        };
        if !principal.roles.intersects(allowed) {
            let message = format!(
                "{} {:?} (roles: {}) may not call {path}; it needs one of: {allowed}",
                principal.kind.as_str(),
                principal.id,
                principal.roles
            );
            return Err((
                Some(principal),
                Denial {
                    code: Code::PermissionDenied,
                    cause: "role",
                    message,
                },
            ));
        }
        let cosigners = self
            .cosigners(headers)
            .map_err(|d| (Some(principal.clone()), d))?;
        Ok(Caller {
            principal,
            cosigners,
        })
    }
}

/// Wraps the whole router (`Server::builder().layer(..)`).
#[derive(Clone)]
pub struct AuthLayer {
    auth: Arc<Auth>,
}

impl AuthLayer {
    pub fn new(auth: Arc<Auth>) -> AuthLayer {
        AuthLayer { auth }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Authorized<S>;

    fn layer(&self, inner: S) -> Authorized<S> {
        Authorized {
            inner,
            auth: self.auth.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Authorized<S> {
    inner: S,
    auth: Arc<Auth>,
}

fn peer<B>(req: &http::Request<B>) -> Option<SocketAddr> {
    let ext = req.extensions();
    ext.get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(|i| i.get_ref().remote_addr())
        .or_else(|| ext.get::<TcpConnectInfo>().and_then(|i| i.remote_addr()))
}

impl<S, B, R> tower::Service<http::Request<B>> for Authorized<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    R: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<S::Future, Ready<Result<S::Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let path = req.uri().path();
        // Health and reflection are open: probes and tools need them before any login, and
        // they disclose nothing of the operation.
        if !path.starts_with("/cit.v1.") {
            return Either::Left(self.inner.call(req));
        }
        let certs = req
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(|i| i.peer_certs());
        match self
            .auth
            .admit(path, req.headers(), certs.as_deref().map(Vec::as_slice))
        {
            Ok(caller) => {
                req.extensions_mut().insert(caller);
                Either::Left(self.inner.call(req))
            }
            Err((principal, denial)) => {
                self.auth
                    .app
                    .denials
                    .record(principal.as_ref(), path, &denial, peer(&req));
                Either::Right(futures::future::ready(Ok(Status::new(
                    denial.code,
                    denial.message,
                )
                .into_http())))
            }
        }
    }
}

/// The caller of a request that passed the layer. A handler reached without one (a router
/// built without the layer) refuses rather than act for nobody.
pub fn caller<T>(req: &tonic::Request<T>) -> Result<&Caller, Status> {
    req.extensions()
        .get::<Caller>()
        .ok_or_else(|| Status::unauthenticated("no authenticated caller"))
}
