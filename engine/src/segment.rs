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
    match flat::parse(bytes) {
        Some(segment) => Ok(segment),
        None => from_json_slice_full(bytes),
    }
}

/// The full parser (serde_json): what [`from_json_slice`] gives for any document.
fn from_json_slice_full(bytes: &[u8]) -> Result<Segment, String> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Map(m)) => Ok(m),
        Ok(other) => Err(format!(
            "expected a JSON object, found {}",
            other.type_name()
        )),
        Err(e) => Err(format!("malformed JSON: {e}")),
    }
}

/// A fast path for the common shape of input records: one flat object whose keys and string
/// values have no escapes and whose numbers are integers of at most 18 digits. It gives exactly
/// what serde_json gives for such a document, and `None` for anything else (nested values,
/// floats, escapes, long or odd numbers, malformed text), which then takes the full parser
/// (and its error messages).
mod flat {
    use super::{Map, Segment, Value};

    struct Cursor<'a> {
        /// The whole line, checked as UTF-8 once (one pass over the line instead of one call
        /// per string); strings are sliced out of it.
        text: &'a str,
        bytes: &'a [u8],
        at: usize,
    }

    /// Parses `bytes` if it is a simple flat object.
    pub(super) fn parse(bytes: &[u8]) -> Option<Segment> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut c = Cursor { text, bytes, at: 0 };
        c.skip_ws();
        c.eat(b'{')?;
        let mut m = Map::new();
        c.skip_ws();
        if c.peek() == Some(b'}') {
            c.at += 1;
        } else {
            loop {
                let key = c.string()?;
                c.skip_ws();
                c.eat(b':')?;
                c.skip_ws();
                let value = c.value()?;
                // As the full parser's map visitor: a repeated key replaces the value in place.
                m.insert(key, value);
                c.skip_ws();
                match c.peek()? {
                    b',' => {
                        c.at += 1;
                        c.skip_ws();
                    }
                    b'}' => {
                        c.at += 1;
                        break;
                    }
                    _ => return None,
                }
            }
        }
        c.skip_ws();
        (c.at == bytes.len()).then_some(m)
    }

    impl<'a> Cursor<'a> {
        fn peek(&self) -> Option<u8> {
            self.bytes.get(self.at).copied()
        }

        fn eat(&mut self, b: u8) -> Option<()> {
            (self.peek()? == b).then(|| self.at += 1)
        }

        /// JSON whitespace, as serde_json skips it.
        fn skip_ws(&mut self) {
            while matches!(self.peek(), Some(b' ' | b'\n' | b'\t' | b'\r')) {
                self.at += 1;
            }
        }

        /// A string without escapes or control characters.
        fn string(&mut self) -> Option<&'a str> {
            self.eat(b'"')?;
            let start = self.at;
            // The closing quote, then a check that nothing before it needs unescaping: two
            // tight passes (memchr, then a byte test) instead of one three-way test per byte.
            let n = memchr::memchr(b'"', &self.bytes[start..])?;
            if self.bytes[start..start + n]
                .iter()
                .any(|&b| b == b'\\' || b < 0x20)
            {
                return None;
            }
            // Both ends are ASCII quotes, so char boundaries of the checked line.
            let s = self.text.get(start..start + n)?;
            self.at = start + n + 1;
            Some(s)
        }

        fn literal(&mut self, text: &[u8], value: Value) -> Option<Value> {
            let end = self.at + text.len();
            (self.bytes.get(self.at..end)? == text).then(|| {
                self.at = end;
                value
            })
        }

        fn value(&mut self) -> Option<Value> {
            match self.peek()? {
                b'"' => self.string().map(Value::from),
                b't' => self.literal(b"true", Value::Bool(true)),
                b'f' => self.literal(b"false", Value::Bool(false)),
                b'n' => self.literal(b"null", Value::Null),
                b'-' => {
                    self.at += 1;
                    // serde_json reads `-0` as the float -0.0.
                    let magnitude = self.digits().filter(|&m| m != 0)?;
                    Some(Value::Int(-(magnitude as i64)))
                }
                b'0'..=b'9' => self.digits().map(|m| Value::Int(m as i64)),
                _ => None,
            }
        }

        /// The digits of an integer: 1 to 18 of them (so any sign fits an `i64`), no leading
        /// zero, not followed by a fraction or an exponent.
        fn digits(&mut self) -> Option<u64> {
            let rest = &self.bytes[self.at..];
            // One pass: value and count together. At most 19 digits are taken, so the value
            // cannot overflow before the length check refuses it.
            let mut v = 0_u64;
            let mut n = 0;
            for &b in rest.iter().take(19) {
                let d = b.wrapping_sub(b'0');
                if d > 9 {
                    break;
                }
                v = v * 10 + u64::from(d);
                n += 1;
            }
            if n == 0 || n > 18 || (n > 1 && rest[0] == b'0') {
                return None;
            }
            if matches!(rest.get(n), Some(b'.' | b'e' | b'E')) {
                return None;
            }
            self.at += n;
            Some(v)
        }
    }
}

/// Writes a segment as one line of compact JSON (no newline).
pub fn to_json_string(segment: &Segment) -> String {
    let mut out = String::new();
    segment.write_json(&mut out);
    out
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
            "\\PC{0,12}".prop_map(Value::from),
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

    fn same_as_serde(text: &[u8]) {
        let fast = from_json_slice(text);
        let full = from_json_slice_full(text);
        assert_eq!(fast, full, "{:?}", String::from_utf8_lossy(text));
        // Equal values can still differ in variant details `==` ignores: compare the JSON too.
        if let (Ok(a), Ok(b)) = (&fast, &full) {
            assert_eq!(a.to_string(), b.to_string());
            assert_eq!(to_bincode(a), to_bincode(b));
        }
    }

    #[test]
    fn the_flat_fast_path_agrees_with_serde_json() {
        let cases: &[&[u8]] = &[
            br#"{"vote_id": 0, "voter_id": 3264, "candidate": "cand_03", "event_time": 1700000000000}"#,
            b"  {\"a\":1}\n",
            b"\t{ \"a\" : -7 , \"b\" :\"\" }\r\n ",
            b"{}",
            b"{ }",
            br#"{"a":true,"b":false,"c":null}"#,
            br#"{"a":1,"a":2,"b":3}"#,
            br#"{"a":0}"#,
            br#"{"a":-0}"#,
            br#"{"a":-0.0}"#,
            br#"{"a":01}"#,
            br#"{"a":-}"#,
            br#"{"a":1.5}"#,
            br#"{"a":1e3}"#,
            br#"{"a":1E3}"#,
            br#"{"a":999999999999999999}"#,
            br#"{"a":-999999999999999999}"#,
            br#"{"a":9999999999999999999}"#,
            br#"{"a":9223372036854775807}"#,
            br#"{"a":9223372036854775808}"#,
            br#"{"a":-9223372036854775808}"#,
            br#"{"a":-9223372036854775809}"#,
            br#"{"a":18446744073709551615}"#,
            br#"{"a":18446744073709551616}"#,
            br#"{"a":"x"y"}"#,
            br#"{"aA":1}"#,
            "{\"é\":\"ü𝄞\"}".as_bytes(),
            b"{\"a\":\"\xff\"}",
            b"{\"a\":\"tab\there\"}",
            br#"{"a":[1,2]}"#,
            br#"{"a":{"b":1}}"#,
            br#"{"a":1,}"#,
            br#"{"a":1"#,
            br#"{"a":1}}"#,
            br#"{"a":1} x"#,
            br#"{"a" 1}"#,
            br#"{a:1}"#,
            br#"{"a":tru}"#,
            br#"{"a":truex}"#,
            br#"{"a":nul}"#,
            br#"{"a":+1}"#,
            br#"{"a":12a}"#,
            b"",
            b"   ",
            b"[1,2]",
            b"\"s\"",
            b"1",
            b"null",
            b"\xef\xbb\xbf{\"a\":1}",
            br#"{"a":1,"b":"two","c":3,"d":4,"e":5,"f":6}"#,
        ];
        for c in cases {
            same_as_serde(c);
        }
    }

    proptest! {
        #[test]
        fn the_flat_fast_path_agrees_with_serde_json_on_any_text(text in "[ {}\":,a-c0-9.eE\\\\-]{0,24}") {
            same_as_serde(text.as_bytes());
        }

        #[test]
        fn the_flat_fast_path_agrees_with_serde_json_on_flat_objects(
            fields in prop::collection::vec(("[a-z_é\"\\\\]{0,6}", prop_oneof![
                any::<i64>().prop_map(|i| i.to_string()),
                any::<u64>().prop_map(|u| u.to_string()),
                (0_i64..1000).prop_map(|i| i.to_string()),
                "\\PC{0,8}".prop_map(|s| serde_json::to_string(&s).unwrap()),
                Just("true".to_owned()),
                Just("null".to_owned()),
                any::<f64>().prop_map(|f| format!("{f:?}")),
            ]), 0..6),
            sep in "[ \t]{0,2}",
        ) {
            let body: Vec<String> = fields
                .iter()
                .map(|(k, v)| format!("{}{sep}:{sep}{v}", serde_json::to_string(k).unwrap()))
                .collect();
            let text = format!("{sep}{{{sep}{}{sep}}}", body.join(&format!("{sep},{sep}")));
            same_as_serde(text.as_bytes());
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
