//! The binary layout of a stored record in the embedded backend: length-prefixed fields, little
//! endian. Kept by hand because it is eight fields and must never change silently; a format
//! version byte leads so a future layout can be read beside this one.

use uuid::Uuid;

use crate::{Error, RecordedEvent, Result};

const FORMAT_V1: u8 = 1;

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
    stream: &str,
    event_type: &str,
    data: &[u8],
    metadata: &[u8],
) {
    out.clear();
    out.reserve(
        1 + 8 + 16 + 8 + 16 + stream.len() + event_type.len() + data.len() + metadata.len(),
    );
    out.push(FORMAT_V1);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(&created_ms.to_le_bytes());
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

pub fn decode(position: u64, raw: &[u8]) -> Result<RecordedEvent> {
    let mut r = Reader { buf: raw };
    let format = r.take(1)?[0];
    if format != FORMAT_V1 {
        return Err(Error::Storage(format!("unknown record format {format}")));
    }
    let version = r.u64()?;
    let mut id = [0u8; 16];
    id.copy_from_slice(r.take(16)?);
    let created_ms = r.u64()? as i64;
    Ok(RecordedEvent {
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
        };
        let raw = encode(&e);
        assert_eq!(decode(7, &raw).expect("decodes"), e);
        assert!(decode(7, &raw[..raw.len() - 1]).is_err());
    }
}
