//! The record format of segment files: encoding, crc, and parsing one record from a buffer.

use std::io;

use super::{invalid_input, Entry, HEADER_LEN};
use crate::raft::io_err;

pub(super) fn record_crc(index: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&index.to_le_bytes());
    h.update(payload);
    h.finalize()
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// Appends one record for `entry` to `buf`.
pub(super) fn encode_record(buf: &mut Vec<u8>, entry: &Entry) -> io::Result<()> {
    let start = buf.len();
    buf.extend_from_slice(&[0u8; HEADER_LEN]);
    bincode::serialize_into(&mut *buf, entry).map_err(io_err)?;
    let payload = &buf[start + HEADER_LEN..];
    let len = u32::try_from(payload.len()).map_err(|_| {
        invalid_input(format!(
            "log entry {} encodes to {} bytes, more than a record can hold",
            entry.log_id.index,
            payload.len()
        ))
    })?;
    let index = entry.log_id.index;
    let crc = record_crc(index, payload);
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    buf[start + 8..start + 16].copy_from_slice(&index.to_le_bytes());
    Ok(())
}

/// What [`parse_record`] found at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Parsed<'a> {
    /// A complete record with a good crc; `len` is its total length including the header.
    Record {
        index: u64,
        payload: &'a [u8],
        len: usize,
    },
    /// The buffer ends before the record does.
    Short,
    /// The record is complete but fails its checks.
    Corrupt(&'static str),
}

pub(super) fn parse_record(buf: &[u8]) -> Parsed<'_> {
    if buf.len() < HEADER_LEN {
        return Parsed::Short;
    }
    let payload_len = le_u32(&buf[0..4]) as usize;
    let crc = le_u32(&buf[4..8]);
    let index = le_u64(&buf[8..16]);
    if payload_len == 0 {
        // bincode of an Entry is never empty; an all-zero header is typically a zero-filled
        // region from a crash.
        return Parsed::Corrupt("empty payload");
    }
    let Some(payload) = buf.get(HEADER_LEN..HEADER_LEN + payload_len) else {
        return Parsed::Short;
    };
    if record_crc(index, payload) != crc {
        return Parsed::Corrupt("crc mismatch");
    }
    Parsed::Record {
        index,
        payload,
        len: HEADER_LEN + payload_len,
    }
}
