//! Binary encodings: bincode for structured values, checksummed record values, storage keys.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, Result};

/// Encodes a value with bincode 2 (standard config).
pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    bincode::serde::encode_to_vec(value, bincode::config::standard())
        .map_err(|e| Error::Fatal(format!("encode: {e}")))
}

/// Decodes a bincode 2 value; the error is a plain message for the caller to wrap.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> std::result::Result<T, String> {
    bincode::serde::decode_from_slice(bytes, bincode::config::standard())
        .map(|(v, _)| v)
        .map_err(|e| e.to_string())
}

/// crc32 (IEEE) of a payload.
pub(crate) fn crc(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

/// A stored record value: `crc32 (LE) ‖ payload`.
pub(crate) fn record_value(crc: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(4 + payload.len());
    v.extend_from_slice(&crc.to_le_bytes());
    v.extend_from_slice(payload);
    v
}

/// Splits and verifies a stored record value; `Err` carries what was wrong.
pub(crate) fn check_record_value(value: &[u8]) -> std::result::Result<&[u8], String> {
    if value.len() < 4 {
        return Err(format!("stored value too short ({} bytes)", value.len()));
    }
    let (head, payload) = value.split_at(4);
    let stored = u32::from_le_bytes(head.try_into().expect("4 bytes"));
    let actual = crc(payload);
    if stored != actual {
        return Err(format!(
            "checksum mismatch: stored {stored:08x}, computed {actual:08x}"
        ));
    }
    Ok(payload)
}

/// Key prefix of a ledger: `u16 BE length ‖ name`.
pub(crate) fn ledger_prefix(ledger: &str) -> Result<Vec<u8>> {
    let len = u16::try_from(ledger.len())
        .map_err(|_| Error::InvalidRequest("ledger name longer than 65535 bytes".into()))?;
    let mut k = Vec::with_capacity(2 + ledger.len() + 8);
    k.extend_from_slice(&len.to_be_bytes());
    k.extend_from_slice(ledger.as_bytes());
    Ok(k)
}

/// Key of one ledger record: prefix ‖ position (BE, so keys sort by position).
pub(crate) fn record_key(prefix: &[u8], position: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + 8);
    k.extend_from_slice(prefix);
    k.extend_from_slice(&position.to_be_bytes());
    k
}

/// Position from a record key with a known prefix.
pub(crate) fn record_position(prefix: &[u8], key: &[u8]) -> Option<u64> {
    let rest = key.strip_prefix(prefix)?;
    Some(u64::from_be_bytes(rest.try_into().ok()?))
}

/// Key of a Raft log entry or any u64-indexed row (BE).
pub(crate) fn u64_key(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

/// Key of a remembered request id.
pub(crate) fn request_key(client: u64, seq: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&client.to_be_bytes());
    k[8..].copy_from_slice(&seq.to_be_bytes());
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_value_round_trip_and_corruption() {
        let v = record_value(crc(b"hello"), b"hello");
        assert_eq!(check_record_value(&v).unwrap(), b"hello");
        let mut bad = v.clone();
        bad[6] ^= 0x01;
        assert!(check_record_value(&bad).is_err());
        assert!(check_record_value(&v[..3]).is_err());
    }

    #[test]
    fn record_keys_sort_by_position_within_a_ledger() {
        let p = ledger_prefix("a").unwrap();
        assert!(record_key(&p, 2) < record_key(&p, 10));
        assert_eq!(record_position(&p, &record_key(&p, 77)), Some(77));
        // A ledger whose name extends another's is not inside its prefix range.
        let q = ledger_prefix("ab").unwrap();
        assert!(!record_key(&q, 0).starts_with(&p));
    }
}
