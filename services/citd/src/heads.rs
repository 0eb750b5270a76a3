//! Signed run heads. The hash chain shows an edit made after its head was seen, but whoever
//! can write the data directory could rewrite a whole run and recompute every hash. So citd
//! signs each run's chain head (Ed25519, with a key kept outside the data directory, its id
//! recorded) at close-out and periodically while the run is open, as `RunHeadSigned.v1` events
//! on the run's `head-<run>` stream (the run's own stream is not touched). Verification checks
//! each signature against the run as stored: a rewritten run no longer matches what was signed.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use aws_lc_rs::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use cit_domain::event::Event;
use cit_store::{Direction, RecordedEvent};
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;

use crate::app::App;
use cit_store::chain::to_hex as hex;

/// The stream of a run's signed heads.
pub fn stream(run_id: &str) -> String {
    format!("{}{run_id}", cit_domain::event::streams::HEAD)
}

/// What is signed: a domain tag, the run, the version of its stream's head and that event's
/// chain hash.
fn message(run_id: &str, version: u64, chain: &[u8; 32]) -> Vec<u8> {
    let mut m = b"cit-run-head/1\0".to_vec();
    m.extend_from_slice(run_id.as_bytes());
    m.push(0);
    m.extend_from_slice(&version.to_le_bytes());
    m.extend_from_slice(chain);
    m
}

/// The signing key.
pub struct HeadSigner {
    pub key_id: String,
    key: Ed25519KeyPair,
}

impl std::fmt::Debug for HeadSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeadSigner")
            .field("key_id", &self.key_id)
            .finish()
    }
}

impl HeadSigner {
    /// An Ed25519 private key, PKCS#8 PEM (`openssl genpkey -algorithm ed25519`, or
    /// `cit pki init`'s `run-signing.key.pem`).
    pub fn load(path: &Path, key_id: &str) -> Result<HeadSigner, String> {
        let der = match PrivateKeyDer::from_pem_file(path)
            .map_err(|e| format!("run signing key {}: {e}", path.display()))?
        {
            PrivateKeyDer::Pkcs8(k) => k.secret_pkcs8_der().to_vec(),
            _ => return Err(format!("run signing key {}: not PKCS#8", path.display())),
        };
        let key = Ed25519KeyPair::from_pkcs8(&der)
            .or_else(|_| Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der))
            .map_err(|_| format!("run signing key {}: not an Ed25519 key", path.display()))?;
        Ok(HeadSigner {
            key_id: key_id.into(),
            key,
        })
    }

    pub fn public_key(&self) -> &[u8] {
        self.key.public_key().as_ref()
    }

    fn sign(&self, run_id: &str, version: u64, chain: &[u8; 32]) -> Vec<u8> {
        self.key
            .sign(&message(run_id, version, chain))
            .as_ref()
            .to_vec()
    }

    /// Whether `signature` is this key's over the run's head at `version` with `chain`.
    pub fn verifies(&self, run_id: &str, version: u64, chain: &[u8; 32], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, self.public_key())
            .verify(&message(run_id, version, chain), signature)
            .is_ok()
    }
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Signs the head of `run_id` unless its latest signature already covers it. Returns the
/// version signed (None: nothing to sign).
pub async fn sign_head(
    app: &App,
    signer: &HeadSigner,
    run_id: &str,
) -> Result<Option<u64>, String> {
    let run_stream = format!("{}{run_id}", cit_domain::event::streams::RUN);
    let head = app
        .store
        .read_stream(&run_stream, u64::MAX, Direction::Backwards, 1)
        .await
        .map_err(|e| e.to_string())?;
    let Some(head) = head.first() else {
        return Ok(None);
    };
    let last = app
        .store
        .read_stream(&stream(run_id), u64::MAX, Direction::Backwards, 1)
        .await
        .map_err(|e| e.to_string())?;
    if let Some(Event::RunHeadSigned { version, .. }) = last.first().and_then(crate::app::decode)
        && version == head.version
    {
        return Ok(None);
    }
    let signature = signer.sign(run_id, head.version, &head.chain);
    let event = Event::RunHeadSigned {
        run_id: run_id.into(),
        version: head.version,
        chain_hash: hex(&head.chain),
        key_id: signer.key_id.clone(),
        signature: hex(&signature),
        at: app.clock.now(),
    };
    app.append_own(&event, "heads")
        .await
        .map_err(|e| e.to_string())?;
    Ok(Some(head.version))
}

/// Signs, every `every`, the head of each run that moved since its last signature.
pub async fn sign_periodically(
    app: Arc<App>,
    signer: Arc<HeadSigner>,
    every: std::time::Duration,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    tokio::pin!(shutdown);
    // Runs closed or cancelled whose final head is signed: nothing more to read for them.
    let mut done: HashSet<String> = HashSet::new();
    loop {
        let last_round = tokio::select! {
            _ = &mut shutdown => true,
            _ = tick.tick() => false,
        };
        use cit_domain::world::RunStatus;
        let runs: Vec<(String, RunStatus)> = app
            .with_world(|w| {
                w.runs
                    .values()
                    .filter(|r| !done.contains(&r.run_id))
                    .map(|r| (r.run_id.clone(), r.status))
                    .collect()
            })
            .await;
        for (run, status) in runs {
            if status == RunStatus::Planned && !last_round {
                continue;
            }
            match sign_head(&app, &signer, &run).await {
                Ok(_) if matches!(status, RunStatus::Closed | RunStatus::Cancelled) => {
                    done.insert(run);
                }
                Ok(_) => {}
                Err(e) => tracing::error!(run, cause = %e, "cannot sign the run's head"),
            }
        }
        if last_round {
            return;
        }
    }
}

/// What the signatures of a run say about it as stored.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct HeadReport {
    pub checked: u32,
    /// The key of the latest valid signature, and the version it covers.
    pub key_id: String,
    pub signed_version: Option<u64>,
    /// The latest signature covers the stream's last event.
    pub head_covered: bool,
    /// The first signature that does not match the run as stored (rewritten), or that no key
    /// citd holds can check.
    pub problem: Option<String>,
}

/// Checks the signatures in `heads` (the `head-<run>` stream) against `run` (its events).
pub fn check(
    signer: Option<&HeadSigner>,
    run_id: &str,
    run: &[RecordedEvent],
    heads: &[RecordedEvent],
) -> HeadReport {
    let mut report = HeadReport::default();
    for h in heads {
        let Some(Event::RunHeadSigned {
            version,
            chain_hash,
            key_id,
            signature,
            ..
        }) = crate::app::decode(h)
        else {
            continue;
        };
        report.checked += 1;
        let fail = |why: String| Some(format!("signature at version {version}: {why}"));
        let Some(signer) = signer.filter(|s| s.key_id == key_id) else {
            report.problem = report
                .problem
                .or_else(|| fail(format!("key {key_id:?} is not citd's signing key")));
            continue;
        };
        let Some(event) = run.iter().find(|e| e.version == version) else {
            report.problem = report
                .problem
                .or_else(|| fail("the run has no event of that version (truncated)".into()));
            continue;
        };
        let sig = unhex(&signature).unwrap_or_default();
        if hex(&event.chain) != chain_hash || !signer.verifies(run_id, version, &event.chain, &sig)
        {
            report.problem = report
                .problem
                .or_else(|| fail("the run as stored is not what was signed (rewritten)".into()));
            continue;
        }
        report.key_id = key_id;
        report.signed_version = Some(version);
    }
    report.head_covered = match (report.signed_version, run.last()) {
        (Some(v), Some(last)) => v == last.version,
        _ => false,
    };
    report
}
