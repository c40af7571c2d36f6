//! Binary encodings: bincode for structured values, checksummed record values, storage keys.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, Result};

/// Encodes a value with bincode 2 (standard config).
pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    bincode::serde::encode_to_vec(value, bincode::config::standard())
        .map_err(|e| Error::Fatal(format!("encode: {e}")))
}

/// Appends the bincode 2 encoding of a value (standard config) to `out`.
pub(crate) fn encode_into<T: Serialize>(value: &T, out: &mut Vec<u8>) -> Result<()> {
    bincode::serde::encode_into_std_write(value, out, bincode::config::standard())
        .map(|_| ())
        .map_err(|e| Error::Fatal(format!("encode: {e}")))
}

/// Decodes a bincode 2 value; the error is a plain message for the caller to wrap. Safe on
/// untrusted bytes (see [`decode_bounded`]).
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> std::result::Result<T, String> {
    decode_bounded(bytes)
        .map(|(v, _)| v)
        .map_err(|e| e.to_string())
}

/// Decodes a bincode 2 value (standard config: the bytes of `bincode::config::standard()`)
/// from untrusted bytes, returning it and the bytes read.
///
/// Without a limit, bincode allocates a string or byte buffer of whatever length the input
/// declares before reading it, so ten bytes can ask for an exabyte (and abort the process).
/// Here bincode's limit is on: it counts, before allocating, the in-memory size of everything
/// decoded — at most 16 bytes per input byte for a legitimate encoding (a `u128` varint takes
/// one byte; a declared length claims its bytes, which must follow in the input) — against the
/// smallest of a few fixed tiers at or above 16 times the input's size. A lying length fails
/// with "limit exceeded" before anything is allocated, and no allocation exceeds 64 times the
/// input's size. (Sequences of other elements are allocated by serde at most 1 MiB ahead of
/// what was decoded.)
pub fn decode_bounded<T: DeserializeOwned>(
    bytes: &[u8],
) -> std::result::Result<(T, usize), bincode::error::DecodeError> {
    macro_rules! tiers {
        ($($limit:expr),*) => {
            $(
                if bytes.len().saturating_mul(16) <= $limit {
                    return bincode::serde::decode_from_slice(
                        bytes,
                        bincode::config::standard().with_limit::<{ $limit }>(),
                    );
                }
            )*
        };
    }
    tiers!(
        1 << 12,
        1 << 14,
        1 << 16,
        1 << 18,
        1 << 20,
        1 << 22,
        1 << 24,
        1 << 26,
        1 << 28,
        1 << 30,
        1 << 32,
        1 << 34,
        1 << 36
    );
    bincode::serde::decode_from_slice(
        bytes,
        bincode::config::standard().with_limit::<{ usize::MAX }>(),
    )
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
    use proptest::prelude::*;

    #[test]
    fn a_lying_length_is_refused_before_it_is_allocated() {
        // A string of declared length 2^62 in 10 bytes: without a limit bincode would try to
        // allocate it (and abort the process).
        let mut bytes = vec![253u8]; // varint marker: a u64 follows
        bytes.extend_from_slice(&(1u64 << 62).to_le_bytes());
        bytes.push(b'x');
        let e = decode_bounded::<String>(&bytes).unwrap_err();
        assert!(
            matches!(e, bincode::error::DecodeError::LimitExceeded),
            "{e:?}"
        );
        let e = decode_bounded::<serde_bytes::ByteBuf>(&bytes).unwrap_err();
        assert!(
            matches!(e, bincode::error::DecodeError::LimitExceeded),
            "{e:?}"
        );
        let e = decode_bounded::<bytes::Bytes>(&bytes).unwrap_err();
        assert!(
            matches!(e, bincode::error::DecodeError::LimitExceeded),
            "{e:?}"
        );
        // A plain sequence is allocated by serde only as far as it is decoded.
        let e = decode_bounded::<Vec<u64>>(&bytes).unwrap_err();
        assert!(
            matches!(e, bincode::error::DecodeError::UnexpectedEnd { .. }),
            "{e:?}"
        );
    }

    proptest! {
        #[test]
        fn bounded_decoding_round_trips(
            s in ".{0,300}",
            v in proptest::collection::vec(any::<u8>(), 0..5000),
            n in proptest::collection::vec(any::<u128>().prop_map(|x| x % 200), 0..3000),
        ) {
            // Small u128s: one input byte each, sixteen in memory (the densest claim).
            let value = (s.clone(), serde_bytes::ByteBuf::from(v.clone()), n.clone());
            let bytes = encode(&value).unwrap();
            let (back, read): ((String, serde_bytes::ByteBuf, Vec<u128>), usize) =
                decode_bounded(&bytes).unwrap();
            prop_assert_eq!(read, bytes.len());
            prop_assert_eq!(back, value);
        }
    }

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
