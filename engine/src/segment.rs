//! Segments: the records that flow between tasks.
//!
//! A segment is an ordered map of field → [`Value`] ([`Segment`] is the shared [`Map`] type of
//! `sardonyx-windowing`). It converts to and from JSON losslessly, serializes compactly with
//! bincode, and finds a field by a short linear scan.

pub use sardonyx_windowing::{Map, Value};

/// One record: an ordered map from field name to value.
pub type Segment = Map;

/// Parses one JSON document that must be an object into a segment.
pub fn from_json_slice(bytes: &[u8]) -> Result<Segment, String> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Map(m)) => Ok(m),
        Ok(other) => Err(format!(
            "expected a JSON object, found {}",
            other.type_name()
        )),
        Err(e) => Err(format!("malformed JSON: {e}")),
    }
}

/// Writes a segment as one line of compact JSON (no newline).
pub fn to_json_string(segment: &Segment) -> String {
    segment.to_string()
}

/// Encodes a segment with bincode (the form segments take between processes and in logs).
pub fn to_bincode(segment: &Segment) -> Vec<u8> {
    bincode::serde::encode_to_vec(segment, bincode::config::standard())
        .expect("encoding a segment into memory cannot fail")
}

/// Decodes a segment written by [`to_bincode`].
pub fn from_bincode(bytes: &[u8]) -> Result<Segment, String> {
    bincode::serde::decode_from_slice(bytes, bincode::config::standard())
        .map(|(s, _)| s)
        .map_err(|e| format!("malformed segment bytes: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::Int),
            (i64::MAX as u64 + 1..=u64::MAX).prop_map(Value::UInt),
            any::<f64>()
                .prop_filter("JSON has finite floats only", |f| f.is_finite())
                .prop_map(Value::Float),
            "\\PC{0,12}".prop_map(Value::Str),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::List),
                prop::collection::vec(("[a-z_]{1,6}", inner), 0..4)
                    .prop_map(|kv| Value::Map(kv.into_iter().collect())),
            ]
        })
    }

    fn segment() -> impl Strategy<Value = Segment> {
        prop::collection::vec(("[a-z_]{1,8}", value()), 0..6)
            .prop_map(|kv| kv.into_iter().collect())
    }

    proptest! {
        #[test]
        fn json_round_trip_is_lossless(seg in segment()) {
            let line = to_json_string(&seg);
            prop_assert_eq!(from_json_slice(line.as_bytes()).unwrap(), seg.clone());
            let via_serde = serde_json::to_string(&seg).unwrap();
            prop_assert_eq!(from_json_slice(via_serde.as_bytes()).unwrap(), seg);
        }

        #[test]
        fn bincode_round_trip_is_lossless(seg in segment()) {
            prop_assert_eq!(from_bincode(&to_bincode(&seg)).unwrap(), seg);
        }
    }

    #[test]
    fn rejects_non_objects_and_bad_json() {
        assert_eq!(
            from_json_slice(b"[1,2]").unwrap_err(),
            "expected a JSON object, found list"
        );
        assert!(from_json_slice(b"{\"a\":")
            .unwrap_err()
            .starts_with("malformed JSON: EOF while parsing"));
    }

    #[test]
    fn vote_is_small_in_bincode() {
        let seg = from_json_slice(
            br#"{"vote_id":1,"voter_id":4242,"candidate":"cand_03","event_time":1700000000000}"#,
        )
        .unwrap();
        assert!(
            to_bincode(&seg).len() < 70,
            "{} bytes",
            to_bincode(&seg).len()
        );
    }
}
