//! People's bearer tokens: JWTs verified against several keys at once (rotation without
//! downtime), each key pinned to one algorithm (EdDSA or ES256), with `exp`, `aud` and `iss`
//! checked; and, for installations without an identity provider, the tests and the demo, a
//! local signer (`cit token mint`).

use std::collections::HashMap;
use std::path::PathBuf;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::{Kind, Principal, Role, Roles, Via};

/// Longest token taken for parsing; anything longer is refused unread.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Clock skew allowed on `exp` and `nbf`, seconds.
const LEEWAY_S: u64 = 30;

/// A verification key as configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// The `kid` tokens signed with it carry.
    pub kid: String,
    /// `EdDSA` (Ed25519) or `ES256` (P-256): the only algorithm this key verifies.
    pub alg: String,
    /// Public key, PEM (SubjectPublicKeyInfo).
    pub public_key: PathBuf,
}

/// What tokens must say of where they come from and whom they are for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokenConfig {
    pub issuer: String,
    pub audience: String,
    pub keys: Vec<KeyConfig>,
}

impl Default for TokenConfig {
    fn default() -> Self {
        TokenConfig {
            issuer: "cit-local".into(),
            audience: "cit".into(),
            keys: Vec::new(),
        }
    }
}

/// The claims citd reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    #[serde(default)]
    pub roles: Vec<String>,
    pub iss: String,
    pub aud: String,
    pub exp: u64,
    #[serde(default)]
    pub iat: u64,
    #[serde(default)]
    pub jti: String,
}

/// Why a token was not accepted: said to the caller (never the token itself).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is longer than {MAX_TOKEN_BYTES} bytes")]
    TooLong,
    #[error("the token is not a JWT")]
    Malformed,
    #[error("the token names no key (kid)")]
    NoKeyId,
    #[error("the token's key {0:?} is not one citd trusts (unknown or rotated out)")]
    UnknownKey(String),
    #[error("the token's algorithm is not the one pinned for key {0:?}")]
    WrongAlgorithm(String),
    #[error("the token's signature does not verify")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token is for another audience")]
    WrongAudience,
    #[error("the token is from another issuer")]
    WrongIssuer,
    #[error("the token lacks the claim {0}")]
    MissingClaim(String),
    #[error("the token names no subject")]
    NoSubject,
}

struct Key {
    alg: Algorithm,
    key: DecodingKey,
}

/// Most verified tokens remembered; beyond, the memory starts over.
const CACHE_ENTRIES: usize = 8192;

/// Verifies tokens. Built from the configuration (and again on reload, which also forgets
/// every token verified before).
pub struct Verifier {
    keys: HashMap<String, Key>,
    issuer: String,
    audience: String,
    /// Tokens whose signature and claims verified, by the SHA-256 of the token (the map
    /// compares digests, never the secret), with their principal and expiry: a client that
    /// calls with the same token again costs a hash instead of a signature check (~40 us).
    verified: std::sync::Mutex<HashMap<[u8; 32], (Principal, u64, bool)>>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut kids: Vec<_> = self.keys.keys().collect();
        kids.sort();
        f.debug_struct("Verifier")
            .field("kids", &kids)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish()
    }
}

fn algorithm(name: &str) -> Result<Algorithm, String> {
    match name {
        "EdDSA" => Ok(Algorithm::EdDSA),
        "ES256" => Ok(Algorithm::ES256),
        other => Err(format!(
            "algorithm {other:?} is not accepted (EdDSA or ES256)"
        )),
    }
}

impl Verifier {
    /// Reads every configured key; a key that cannot be read fails the whole (re)load.
    pub fn load(config: &TokenConfig) -> Result<Verifier, String> {
        let mut keys = HashMap::new();
        for k in &config.keys {
            let pem = std::fs::read(&k.public_key)
                .map_err(|e| format!("token key {:?}: {}: {e}", k.kid, k.public_key.display()))?;
            let alg = algorithm(&k.alg).map_err(|e| format!("token key {:?}: {e}", k.kid))?;
            keys.insert(k.kid.clone(), Verifier::key(alg, &pem, &k.kid)?);
        }
        Ok(Verifier {
            keys,
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            verified: std::sync::Mutex::new(HashMap::new()),
        })
    }

    fn key(alg: Algorithm, pem: &[u8], kid: &str) -> Result<Key, String> {
        let key = match alg {
            Algorithm::EdDSA => DecodingKey::from_ed_pem(pem),
            _ => DecodingKey::from_ec_pem(pem),
        }
        .map_err(|e| format!("token key {kid:?}: not a PEM public key: {e}"))?;
        Ok(Key { alg, key })
    }

    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// The person a token speaks for. Roles a person cannot hold (unit, gateway) and names
    /// citd does not know are dropped.
    pub fn verify(&self, token: &str) -> Result<Principal, TokenError> {
        self.verify_as(token, false)
    }

    /// [`Verifier::verify`]; with `units` (a citd serving `--insecure` on loopback, where no
    /// client certificate can be presented) a token with the role `gateway` or `unit` speaks
    /// for that unit instead.
    pub fn verify_as(&self, token: &str, units: bool) -> Result<Principal, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::TooLong);
        }
        use sha2::Digest;
        let digest: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        let now = jsonwebtoken::get_current_timestamp();
        let mut cache = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((p, exp, as_units)) = cache.get(&digest)
            && *as_units == units
        {
            if now <= exp + LEEWAY_S {
                return Ok(p.clone());
            }
            cache.remove(&digest);
            return Err(TokenError::Expired);
        }
        drop(cache);
        let (p, exp) = self.check(token, units)?;
        let mut cache = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(digest, (p.clone(), exp, units));
        Ok(p)
    }

    /// The signature and claims of `token`, checked: its principal and expiry.
    fn check(&self, token: &str, units: bool) -> Result<(Principal, u64), TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        let kid = header.kid.ok_or(TokenError::NoKeyId)?;
        let key = self
            .keys
            .get(&kid)
            .ok_or_else(|| TokenError::UnknownKey(kid.clone()))?;
        if header.alg != key.alg {
            return Err(TokenError::WrongAlgorithm(kid));
        }
        let mut v = Validation::new(key.alg);
        v.leeway = LEEWAY_S;
        v.set_audience(&[&self.audience]);
        v.set_issuer(&[&self.issuer]);
        v.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
        let data =
            jsonwebtoken::decode::<Claims>(token, &key.key, &v).map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                ErrorKind::ImmatureSignature => TokenError::NotYetValid,
                ErrorKind::InvalidAudience => TokenError::WrongAudience,
                ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
                ErrorKind::InvalidAlgorithm => TokenError::WrongAlgorithm(kid.clone()),
                ErrorKind::MissingRequiredClaim(c) => TokenError::MissingClaim(c.clone()),
                ErrorKind::InvalidSignature => TokenError::BadSignature,
                _ => TokenError::Malformed,
            })?;
        let c = data.claims;
        if c.sub.trim().is_empty() || c.sub.len() > 128 {
            return Err(TokenError::NoSubject);
        }
        let via = Via::Token {
            key_id: kid,
            token_id: c.jti,
        };
        let unit_role = c.roles.iter().find_map(|r| match Role::parse(r) {
            Some(r @ (Role::Unit | Role::Gateway)) => Some(r),
            _ => None,
        });
        if let (true, Some(role)) = (units, unit_role) {
            let p = Principal {
                id: c.sub,
                kind: if role == Role::Gateway {
                    Kind::Gateway
                } else {
                    Kind::Unit
                },
                roles: Roles::of(&[role]),
                via,
            };
            return Ok((p, c.exp));
        }
        let mut roles = Roles::NONE;
        for r in c.roles.iter().filter_map(|r| Role::parse(r)) {
            if !matches!(r, Role::Unit | Role::Gateway) {
                roles.insert(r);
            }
        }
        let p = Principal {
            id: c.sub,
            kind: Kind::Person,
            roles,
            via,
        };
        Ok((p, c.exp))
    }
}

/// Mints tokens with a local signing key (Ed25519, PKCS#8 PEM).
pub struct Signer {
    kid: String,
    key: EncodingKey,
    issuer: String,
    audience: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").field("kid", &self.kid).finish()
    }
}

impl Signer {
    pub fn from_pem(kid: &str, pem: &[u8], issuer: &str, audience: &str) -> Result<Signer, String> {
        let key = EncodingKey::from_ed_pem(pem)
            .map_err(|e| format!("signing key {kid:?}: not an Ed25519 PKCS#8 PEM key: {e}"))?;
        Ok(Signer {
            kid: kid.into(),
            key,
            issuer: issuer.into(),
            audience: audience.into(),
        })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// A token for `sub` with `roles`, valid `ttl_s` seconds from `now_s` (Unix seconds).
    pub fn mint_at(&self, sub: &str, roles: &[&str], now_s: u64, ttl_s: u64) -> String {
        let claims = Claims {
            sub: sub.into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            exp: now_s + ttl_s,
            iat: now_s,
            jti: uuid::Uuid::new_v4().to_string(),
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        // Signing with a key that parsed cannot fail for these claims.
        jsonwebtoken::encode(&header, &claims, &self.key).unwrap_or_default()
    }

    /// [`Signer::mint_at`] now.
    pub fn mint(&self, sub: &str, roles: &[&str], ttl_s: u64) -> String {
        self.mint_at(sub, roles, jsonwebtoken::get_current_timestamp(), ttl_s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(dir: &std::path::Path, kid: &str) -> (Signer, KeyConfig) {
        let k = super::super::devpki::token_key(dir, kid).expect("key");
        let pem = std::fs::read(&k.1).expect("read");
        (
            Signer::from_pem(kid, &pem, "cit-local", "cit").expect("signer"),
            k.0,
        )
    }

    fn verifier(keys: Vec<KeyConfig>) -> Verifier {
        Verifier::load(&TokenConfig {
            keys,
            ..TokenConfig::default()
        })
        .expect("verifier")
    }

    #[test]
    fn a_minted_token_verifies_and_names_its_person_and_roles() {
        let dir = tempfile::tempdir().expect("dir");
        let (s, k) = pair(dir.path(), "k1");
        let v = verifier(vec![k]);
        let p = v
            .verify(&s.mint("D-1", &["driver", "gateway", "no-such-role"], 60))
            .expect("verifies");
        assert_eq!(p.id, "D-1");
        assert_eq!(p.kind, Kind::Person);
        // A person's token cannot make them a unit; unknown role names grant nothing.
        assert_eq!(p.roles, Roles::of(&[Role::Driver]));
        // Except on a citd serving --insecure, where no certificate can be presented.
        let g = v
            .verify_as(&s.mint("GW-1", &["gateway"], 60), true)
            .expect("verifies");
        assert_eq!(
            (g.kind, g.roles),
            (Kind::Gateway, Roles::of(&[Role::Gateway]))
        );
        assert!(matches!(p.via, Via::Token { ref key_id, .. } if key_id == "k1"));
    }

    #[test]
    fn bad_tokens_are_refused_with_their_reason() {
        let dir = tempfile::tempdir().expect("dir");
        let (s1, k1) = pair(dir.path(), "k1");
        let (s2, k2) = pair(dir.path(), "k2");
        let both = verifier(vec![k1.clone(), k2]);
        // Rotation: both keys verify while both are configured; k2 alone rejects k1's.
        assert!(both.verify(&s1.mint("A", &["auditor"], 60)).is_ok());
        assert!(both.verify(&s2.mint("A", &["auditor"], 60)).is_ok());
        let (_, k2_again) = pair(dir.path(), "k2b");
        let rotated = verifier(vec![k2_again]);
        assert_eq!(
            rotated.verify(&s1.mint("A", &["auditor"], 60)),
            Err(TokenError::UnknownKey("k1".into()))
        );
        let now = jsonwebtoken::get_current_timestamp();
        assert_eq!(
            both.verify(&s1.mint_at("A", &[], now - 3600, 60)),
            Err(TokenError::Expired)
        );
        let other_aud = Signer::from_pem(
            "k1",
            &std::fs::read(dir.path().join("token-k1.key.pem")).expect("key"),
            "cit-local",
            "someone-else",
        )
        .expect("signer");
        assert_eq!(
            both.verify(&other_aud.mint("A", &[], 60)),
            Err(TokenError::WrongAudience)
        );
        // A token re-signed under k2's kid with k1's key: bad signature.
        let forged = Signer::from_pem(
            "k2",
            &std::fs::read(dir.path().join("token-k1.key.pem")).expect("key"),
            "cit-local",
            "cit",
        )
        .expect("signer");
        assert_eq!(
            both.verify(&forged.mint("A", &[], 60)),
            Err(TokenError::BadSignature)
        );
        // alg=none and HS256 with the public key as secret: the pinned algorithm refuses them.
        let none = format!(
            "{}.{}.",
            base64_url(br#"{"alg":"none","kid":"k1"}"#),
            base64_url(br#"{"sub":"A","iss":"cit-local","aud":"cit","exp":99999999999}"#)
        );
        assert_eq!(both.verify(&none), Err(TokenError::Malformed));
        let hs = format!(
            "{}.{}.AAAA",
            base64_url(br#"{"alg":"HS256","kid":"k1","typ":"JWT"}"#),
            base64_url(br#"{"sub":"A","iss":"cit-local","aud":"cit","exp":99999999999}"#)
        );
        assert_eq!(
            both.verify(&hs),
            Err(TokenError::WrongAlgorithm("k1".into()))
        );
        for garbage in ["", "x", "a.b.c", "....", &"A".repeat(MAX_TOKEN_BYTES + 1)] {
            assert!(both.verify(garbage).is_err(), "{garbage:.20}");
        }
    }

    fn base64_url(b: &[u8]) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    }
}
