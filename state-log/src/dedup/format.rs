//! Byte layouts of the dedup filter: varints, the ids of a stored batch.

use crate::error::{Error, Result};

/// Appends `n` as LEB128 (7 bits per byte, low first).
pub(super) fn put_varint(out: &mut Vec<u8>, mut n: usize) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// Takes a LEB128 number off the front of `bytes`; `None` if it is cut short or too long.
pub(super) fn take_varint(bytes: &mut &[u8]) -> Option<usize> {
    let mut n = 0usize;
    let mut shift = 0;
    loop {
        let (&b, rest) = bytes.split_first()?;
        *bytes = rest;
        if shift > 56 {
            return None;
        }
        n |= ((b & 0x7f) as usize) << shift;
        shift += 7;
        if b & 0x80 == 0 {
            return Some(n);
        }
    }
}

pub(super) fn encode_id(blob: &mut Vec<u8>, id: &[u8]) {
    put_varint(blob, id.len());
    blob.extend_from_slice(id);
}

/// The ids of a stored batch, in order.
pub(super) struct BlobIds<'a> {
    pub(super) blob: &'a [u8],
}

impl<'a> Iterator for BlobIds<'a> {
    type Item = std::result::Result<&'a [u8], ()>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.blob.is_empty() {
            return None;
        }
        let Some(len) = take_varint(&mut self.blob).filter(|l| *l <= self.blob.len()) else {
            self.blob = &[];
            return Some(Err(()));
        };
        let (id, rest) = self.blob.split_at(len);
        self.blob = rest;
        Some(Ok(id))
    }
}

pub(super) fn corrupt(bucket: &str, batch: u64) -> Error {
    Error::Corrupt {
        ledger: format!("<dedup filter {bucket}>"),
        position: batch,
        detail: "stored batch of ids does not decode".into(),
    }
}

pub(super) fn batch_number(bucket: &str, key: &[u8]) -> Result<u32> {
    let bytes: [u8; 8] = key.try_into().map_err(|_| corrupt(bucket, 0))?;
    u32::try_from(u64::from_be_bytes(bytes)).map_err(|_| corrupt(bucket, 0))
}
