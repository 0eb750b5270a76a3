//! The engine worker's snapshot: the detection engine, the read models it feeds (fleet,
//! anomalies) and its copy of the command side's state ([`crate::app::Rebuild`]) as of one log
//! position, so a restart reads the log only after it, for the engine's subscription and for the
//! command side alike. Written every `snapshot_interval_s` and at shutdown.
//!
//! - Format: CBOR (ciborium). The engine's state has maps keyed by tuples and floats that may be
//!   infinite, which JSON cannot carry; the file is for citd, not for people. A format number
//!   leads, and a snapshot of another format is ignored (the log is replayed instead).
//! - Safety: the file is written beside, fsynced, then renamed over the old one, so a crash leaves
//!   the old snapshot or the new one, never half of one. It names the id of the event at its
//!   position; a snapshot whose position holds another event (a store replaced under the data
//!   directory) is ignored. A snapshot is only ever an optimisation: events after its position
//!   are replayed, and anomaly ids and their event ids are deterministic, so nothing is raised
//!   twice.

use std::io::Write;
use std::path::{Path, PathBuf};

use cit_engine::Engine;
use serde::{Deserialize, Serialize};

use crate::anomalies::Book;
use crate::app::Rebuild;
use crate::fleet::Runs;

/// Bump when the layout of anything inside changes.
pub const FORMAT: u32 = 5;
pub const FILE_NAME: &str = "engine.snapshot";

/// What a snapshot holds (borrowed when written, owned when read).
#[derive(Debug, Serialize, Deserialize)]
pub struct Snapshot<E, R> {
    pub format: u32,
    /// Every event up to and including this log position is folded in.
    pub position: u64,
    /// Id of the event at `position`, to recognise the log it was taken from.
    pub event_id: uuid::Uuid,
    pub engine: E,
    pub fleet: Runs,
    pub anomalies: Book,
    pub commands: R,
}

pub fn path(dir: &Path) -> PathBuf {
    dir.join(FILE_NAME)
}

/// Encodes a snapshot (on the caller's thread: it borrows the live engine).
pub fn encode(s: &Snapshot<&Engine, &Rebuild>) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    ciborium::into_writer(s, &mut bytes).map_err(std::io::Error::other)?;
    Ok(bytes)
}

/// Writes encoded bytes durably and atomically (temporary file, fsync, rename, fsync dir).
pub fn write(dir: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!("{FILE_NAME}.tmp"));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path(dir))?;
    std::fs::File::open(dir)?.sync_all()
}

/// Reads the snapshot in `dir`, if there is a usable one.
pub fn read(dir: &Path) -> Option<Snapshot<Engine, Rebuild>> {
    let file = match std::fs::File::open(path(dir)) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(cause = %e, "engine snapshot unreadable; replaying the log");
            return None;
        }
    };
    match ciborium::from_reader::<Snapshot<Engine, Rebuild>, _>(std::io::BufReader::new(file)) {
        Ok(s) if s.format == FORMAT => Some(s),
        Ok(s) => {
            tracing::warn!(
                format = s.format,
                "engine snapshot of another format; replaying the log"
            );
            None
        }
        Err(e) => {
            tracing::warn!(cause = %e, "engine snapshot undecodable; replaying the log");
            None
        }
    }
}
