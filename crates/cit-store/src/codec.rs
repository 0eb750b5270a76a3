//! The binary layout of a stored record in the embedded backend: length-prefixed fields, little
//! endian. Kept by hand because it is nine fields and must never change silently; a format
//! version byte leads so every layout ever written stays readable.
//!
//! - v1: version, id, created_ms, stream, type, data, metadata.
//! - v2: v1 plus the chain hash right after created_ms, at a fixed offset ([`chain_of`]) so the
//!   writer reads a stream's previous hash without decoding the whole record.

use uuid::Uuid;

use crate::chain::{GENESIS, Hash};
use crate::{Error, RecordedEvent, Result};

const FORMAT_V1: u8 = 1;
const FORMAT_V2: u8 = 2;
/// Where a v2 record's chain hash sits: after format, version, id and created_ms.
const CHAIN_AT: usize = 1 + 8 + 16 + 8;

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

/// Encodes everything of a record except its position (the table key).
pub fn encode(e: &RecordedEvent) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(
        &mut out,
        e.version,
        e.id,
        e.created_ms,
        &e.chain,
        &e.stream,
        &e.event_type,
        &e.data,
        &e.metadata,
    );
    out
}

/// Encodes a record from its parts into `out` (cleared first), with no intermediate copies:
/// the writer thread is the store's bottleneck, so it encodes straight from the append.
#[allow(clippy::too_many_arguments)]
pub fn encode_into(
    out: &mut Vec<u8>,
    version: u64,
    id: Uuid,
    created_ms: i64,
    chain: &Hash,
    stream: &str,
    event_type: &str,
    data: &[u8],
    metadata: &[u8],
) {
    out.clear();
    out.reserve(CHAIN_AT + 32 + 16 + stream.len() + event_type.len() + data.len() + metadata.len());
    out.push(FORMAT_V2);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(&created_ms.to_le_bytes());
    out.extend_from_slice(chain);
    put_bytes(out, stream.as_bytes());
    put_bytes(out, event_type.as_bytes());
    put_bytes(out, data);
    put_bytes(out, metadata);
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.buf.len() < n {
            return Err(Error::Storage("truncated record".into()));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    fn u64(&mut self) -> Result<u64> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
    fn bytes(&mut self) -> Result<&'a [u8]> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        let n = u32::from_le_bytes(a) as usize;
        self.take(n)
    }
    fn string(&mut self) -> Result<String> {
        String::from_utf8(self.bytes()?.to_vec())
            .map_err(|_| Error::Storage("record holds invalid UTF-8".into()))
    }
}

/// The chain hash of an encoded record, read in place ([`GENESIS`] for a v1 record).
pub fn chain_of(raw: &[u8]) -> Result<Hash> {
    match raw.first() {
        Some(&FORMAT_V2) => raw
            .get(CHAIN_AT..CHAIN_AT + 32)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| Error::Storage("truncated record".into())),
        Some(&FORMAT_V1) => Ok(GENESIS),
        other => Err(Error::Storage(format!("unknown record format {other:?}"))),
    }
}

pub fn decode(position: u64, raw: &[u8]) -> Result<RecordedEvent> {
    let mut r = Reader { buf: raw };
    let format = r.take(1)?[0];
    if format != FORMAT_V1 && format != FORMAT_V2 {
        return Err(Error::Storage(format!("unknown record format {format}")));
    }
    let version = r.u64()?;
    let mut id = [0u8; 16];
    id.copy_from_slice(r.take(16)?);
    let created_ms = r.u64()? as i64;
    let mut chain = GENESIS;
    if format == FORMAT_V2 {
        chain.copy_from_slice(r.take(32)?);
    }
    Ok(RecordedEvent {
        chain,
        position,
        version,
        id: Uuid::from_bytes(id),
        created_ms,
        stream: r.string()?,
        event_type: r.string()?,
        data: r.bytes()?.to_vec(),
        metadata: r.bytes()?.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_truncation() {
        let e = RecordedEvent {
            position: 7,
            stream: "run-R-1".into(),
            version: 3,
            id: Uuid::from_u128(42),
            event_type: "RunDeparted.v1".into(),
            data: b"{\"a\":1}".to_vec(),
            metadata: vec![],
            created_ms: 1_700_000_000_000,
            chain: [9; 32],
        };
        let raw = encode(&e);
        assert_eq!(decode(7, &raw).expect("decodes"), e);
        assert_eq!(chain_of(&raw).expect("chain"), [9; 32]);
        assert!(decode(7, &raw[..raw.len() - 1]).is_err());
    }
}
