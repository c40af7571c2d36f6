//! Segments: the records that flow between tasks.
//!
//! A segment is an ordered map of field → [`Value`] ([`Segment`] is the shared [`Map`] type of
//! `sardonyx-windowing`). It converts to and from JSON losslessly, serializes compactly with
//! bincode, and finds a field by a short linear scan (by a hash index in a segment of many
//! fields).
//!
//! Both decoders take bytes from outside and give a segment or an error, never a panic, with
//! bounded work and memory: JSON nests at most 127 levels (serde_json's recursion limit; the
//! flat fast path does not nest), a JSON object repeating a field keeps the **last** value at the
//! **first** field's place, and bincode nests at most [`sardonyx_windowing::value::MAX_BINARY_DEPTH`]
//! levels. Line length is bounded before parsing, by the inputs' `max_line_bytes`.

use sardonyx_windowing::value::{field_eq, SpareFields, Text};
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

/// The fields a projected parse keeps ([`from_json_slice_projected`]), ready for a lookup per
/// key: a table by length gives the one name of a key's length (most jobs read fields of
/// distinct lengths), so a key costs one comparison; keys of a length no name has are rejected
/// by the table alone. Built once per input, not per line (a binary search of string
/// comparisons per key was ~10 % of a Nexmark job's CPU).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fields {
    /// Sorted, each once, as segment keys: a parsed line's fields take a copy of these.
    names: Vec<Text>,
    /// For each key length (63 standing for 63 and longer): [`Fields::NONE`], the place of the
    /// one name of that length plus one, or [`Fields::SEVERAL`].
    by_length: [u8; 64],
}

impl Fields {
    /// Above this many names a binary search beats comparing each (for a length several
    /// names share).
    const LINEAR_UP_TO: usize = 8;
    /// No name has this length.
    const NONE: u8 = 0;
    /// Several names have this length (or the names are too many for the table to place).
    const SEVERAL: u8 = u8::MAX;

    /// The fields named in `names` (in any order).
    pub fn new(mut names: Vec<String>) -> Self {
        names.sort();
        names.dedup();
        let mut by_length = [Self::NONE; 64];
        for (i, n) in names.iter().enumerate() {
            let slot = &mut by_length[n.len().min(63)];
            *slot = match u8::try_from(i + 1) {
                Ok(place) if *slot == Self::NONE && place < Self::SEVERAL => place,
                _ => Self::SEVERAL,
            };
        }
        let names = names.into_iter().map(Text::from).collect();
        Fields { names, by_length }
    }

    /// The names, sorted.
    pub fn names(&self) -> &[Text] {
        &self.names
    }

    /// True if `key` is one of the fields.
    pub fn has(&self, key: &str) -> bool {
        self.index_of(key).is_some()
    }

    /// The place of `key` in [`Fields::names`], if it is one of the fields.
    #[inline]
    fn index_of(&self, key: &str) -> Option<usize> {
        match self.by_length[key.len().min(63)] {
            Self::NONE => None,
            Self::SEVERAL if self.names.len() <= Self::LINEAR_UP_TO => {
                self.names.iter().position(|n| field_eq(n, key))
            }
            Self::SEVERAL => self.names.binary_search_by(|n| n.as_str().cmp(key)).ok(),
            place => {
                let i = usize::from(place - 1);
                field_eq(&self.names[i], key).then_some(i)
            }
        }
    }
}

/// A parser for one stream of lines, into segments of every field ([`LineParser::whole`]:
/// [`from_json_slice`]) or of only some ([`LineParser::new`]: [`from_json_slice_projected`]),
/// with a memory:
/// - A projected parser remembers the keys of the last line it parsed, in order, and where the
///   next line has the same key at the same place (as lines of one producer do) it takes the
///   key by one comparison of bytes instead of scanning it and looking it up. A line of
///   another shape parses as before and becomes the one remembered.
/// - Segments are parsed into the field lists of segments an output has written, when the
///   pool has some ([`LineParser::restock`], [`crate::recycle`]).
///
/// Every line gives exactly what the stateless function gives.
#[derive(Debug)]
pub struct LineParser {
    /// The fields kept; `None` keeps every field.
    fields: Option<Fields>,
    shape: flat::Shape,
    /// Field lists to parse into, taken from the pool by [`LineParser::restock`].
    spares: Vec<SpareFields>,
}

impl LineParser {
    /// A parser of lines into segments of only `fields`.
    pub fn new(fields: Fields) -> Self {
        LineParser {
            fields: Some(fields),
            shape: flat::Shape::default(),
            spares: Vec::new(),
        }
    }

    /// A parser of lines into segments of every field.
    pub fn whole() -> Self {
        LineParser {
            fields: None,
            shape: flat::Shape::default(),
            spares: Vec::new(),
        }
    }

    /// Takes a chunk of spare field lists from the process's pool ([`crate::recycle::POOL`])
    /// if the parser has none left: segments parsed next hold their fields in them instead
    /// of new allocations. Once per batch is enough.
    pub fn restock(&mut self) {
        if self.spares.is_empty() {
            self.spares = crate::recycle::POOL.take();
        }
    }

    /// Parses one JSON document that must be an object into a segment (of only the fields, if
    /// projected): [`from_json_slice`]'s or [`from_json_slice_projected`]'s result and errors.
    pub fn parse(&mut self, bytes: &[u8]) -> Result<Segment, String> {
        let into = match self.spares.pop() {
            Some(spare) => Map::from_spare(spare),
            None => Map::with_capacity(self.fields.as_ref().map_or(0, |f| f.names().len())),
        };
        match &self.fields {
            Some(fields) => {
                match flat::parse_projected(bytes, into, Some(fields), Some(&mut self.shape)) {
                    Some(segment) => Ok(segment),
                    None => from_json_slice_full_projected(bytes, fields),
                }
            }
            None => match flat::parse_projected(bytes, into, None, None) {
                Some(segment) => Ok(segment),
                None => from_json_slice_full(bytes),
            },
        }
    }
}

/// Parses one JSON document that must be an object into a segment of only `fields`: exactly
/// [`from_json_slice`] with every other field removed, and the same errors. The fast path skips
/// the other fields' values without building them.
pub fn from_json_slice_projected(bytes: &[u8], fields: &Fields) -> Result<Segment, String> {
    let into = Map::with_capacity(fields.names().len());
    match flat::parse_projected(bytes, into, Some(fields), None) {
        Some(segment) => Ok(segment),
        None => from_json_slice_full_projected(bytes, fields),
    }
}

/// The full parser's segment of only `fields`.
fn from_json_slice_full_projected(bytes: &[u8], fields: &Fields) -> Result<Segment, String> {
    from_json_slice_full(bytes).map(|mut m| {
        let other: Vec<String> = m
            .iter()
            .filter(|(k, _)| !fields.has(k))
            .map(|(k, _)| k.to_owned())
            .collect();
        for k in other {
            m.remove(&k);
        }
        m
    })
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
    use super::{Fields, Map, Segment, Value};
    use sardonyx_windowing::value::bytes_eq;

    /// The parse's place in a line. The line is not checked as UTF-8 as a whole: outside
    /// strings the parser takes only ASCII bytes (anything else is not a simple flat object),
    /// and each string is checked where it is scanned ([`Cursor::string`]), so a line with
    /// invalid UTF-8 anywhere is refused as before, and a line of short strings costs one
    /// short check per string kept or skipped instead of one over the whole line.
    struct Cursor<'a> {
        bytes: &'a [u8],
        at: usize,
    }

    /// Parses `bytes` if it is a simple flat object.
    pub(super) fn parse(bytes: &[u8]) -> Option<Segment> {
        parse_projected(bytes, Map::new(), None, None)
    }

    /// The keys of the last line a [`super::LineParser`] parsed, in order, each as the bytes
    /// from its opening quote through the whitespace after its colon.
    #[derive(Clone, Debug, Default)]
    pub(super) struct Shape {
        keys: Vec<KnownKey>,
    }

    #[derive(Clone, Debug)]
    struct KnownKey {
        /// `"key"`, the whitespace and colon that followed it, and the whitespace after that.
        raw: Vec<u8>,
        /// The key's length in bytes.
        len: usize,
        /// Its place among the fields kept ([`Fields::index_of`]).
        place: Option<usize>,
    }

    impl Shape {
        /// Keys past this place in a line are not remembered (a line of many fields costs no
        /// more memory than a line of this many).
        const MAX_KEYS: usize = 32;
        /// Longer keys are not remembered.
        const MAX_RAW: usize = 64;

        /// The key at place `j` of the last line, if `rest` begins with it as that line had it.
        #[inline]
        fn known(&self, j: usize, rest: &[u8]) -> Option<&KnownKey> {
            self.keys
                .get(j)
                .filter(|k| rest.get(..k.raw.len()).is_some_and(|r| bytes_eq(r, &k.raw)))
        }

        /// Remembers the key at place `j` of this line (`raw` as [`KnownKey::raw`]).
        fn learn(&mut self, j: usize, raw: &[u8], len: usize, place: Option<usize>) {
            if raw.len() > Self::MAX_RAW || j >= Self::MAX_KEYS {
                return;
            }
            let n = self.keys.len();
            match self.keys.get_mut(j) {
                Some(k) => {
                    k.raw.clear();
                    k.raw.extend_from_slice(raw);
                    k.len = len;
                    k.place = place;
                }
                None if j == n => self.keys.push(KnownKey {
                    raw: raw.to_vec(),
                    len,
                    place,
                }),
                // A key before it was not remembered (too long): so is this one.
                None => {}
            }
        }
    }

    /// Parses `bytes` into `m` (empty) if it is a simple flat object, keeping only the fields
    /// of `keep` if given; the values of the others are checked but not built. With a `shape`
    /// (and `keep`), a key found where the shape's last line had it is taken without scanning,
    /// and the shape learns the keys it did not know.
    pub(super) fn parse_projected(
        bytes: &[u8],
        mut m: Map,
        keep: Option<&Fields>,
        mut shape: Option<&mut Shape>,
    ) -> Option<Segment> {
        debug_assert!(m.is_empty());
        let mut c = Cursor { bytes, at: 0 };
        c.skip_ws();
        c.eat(b'{')?;
        // Bit `i` set once the field `keep.names()[i]` (for `i` below 64) is in `m`: a field
        // seen for the first time is appended with its prebuilt key and no search of `m`.
        let mut set = 0_u64;
        c.skip_ws();
        if c.peek() == Some(b'}') {
            c.at += 1;
        } else {
            let mut j = 0;
            loop {
                let start = c.at;
                // A key as the last line had it is the same string the scan would give (it
                // holds no quote or escape, and the quote after it closes it), followed by
                // the same colon.
                let known = shape
                    .as_deref()
                    .and_then(|s| s.known(j, &bytes[start..]))
                    .map(|k| (k.raw.len(), k.len, k.place));
                // The key as text: scanned (and checked) if it was not known; a known one is
                // taken from the line only where it is needed, by a map with no projection.
                let (key, key_len, place) = match known {
                    Some((raw, len, place)) => {
                        c.at = start + raw;
                        c.skip_ws();
                        (None, len, place)
                    }
                    None => {
                        let key = c.string()?;
                        c.skip_ws();
                        c.eat(b':')?;
                        c.skip_ws();
                        let place = keep.and_then(|f| f.index_of(key));
                        if let Some(s) = shape.as_deref_mut() {
                            s.learn(j, &bytes[start..c.at], key.len(), place);
                        }
                        (Some(key), key.len(), place)
                    }
                };
                j += 1;
                // As the full parser's map visitor, a repeated key replaces the value in place
                // (`insert`).
                match (keep, place) {
                    (Some(f), Some(i)) if i < 64 && set & 1 << i == 0 => {
                        set |= 1 << i;
                        m.push_distinct(f.names[i].clone(), c.value()?);
                    }
                    (Some(_), None) => c.skip_value()?,
                    (Some(_), Some(_)) | (None, _) => {
                        let key = match key {
                            Some(k) => k,
                            None => {
                                std::str::from_utf8(&bytes[start + 1..start + 1 + key_len]).ok()?
                            }
                        };
                        m.insert(key, c.value()?);
                    }
                }
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

    /// Whether `s` holds a byte a JSON string must escape (a backslash or a control
    /// character): one pass with no early exit, for what follows a string's first 16 bytes.
    /// (Eight bytes at a time with a bit trick measured no faster over whole strings of
    /// Nexmark's bids; [`special_in_words`] uses it only where a string ends early.)
    pub(super) fn needs_unescaping(s: &[u8]) -> bool {
        s.iter().fold(0_u8, |any, &b| {
            any | u8::from(b == b'\\') | u8::from(b < 0x20)
        }) != 0
    }

    /// The place of the first quote, backslash or control byte in the first `words` whole
    /// 8-byte words of `s` (`Ok`), or, if there is none, how many bytes were checked (`Err`).
    /// Each word is tested with three "has a zero byte" bit tricks at once; the lowest flagged
    /// byte is always a true match (a false flag only ever sits above a true one).
    pub(super) fn special_in_words(s: &[u8], words: usize) -> Result<usize, usize> {
        const ONES: u64 = 0x0101_0101_0101_0101;
        const HIGH: u64 = 0x8080_8080_8080_8080;
        let mut at = 0;
        for chunk in s.chunks_exact(8).take(words) {
            let w = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
            let quote = w ^ (ONES * u64::from(b'"'));
            let backslash = w ^ (ONES * u64::from(b'\\'));
            let flags = (quote.wrapping_sub(ONES) & !quote)
                | (backslash.wrapping_sub(ONES) & !backslash)
                | (w.wrapping_sub(ONES * 0x20) & !w);
            let flags = flags & HIGH;
            if flags != 0 {
                return Ok(at + (flags.trailing_zeros() / 8) as usize);
            }
            at += 8;
        }
        Err(at)
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
            let rest = &self.bytes[start..];
            // Most keys and short values end within two words: found by a word-at-a-time test.
            // Past them, the closing quote, then a check that nothing before it needs
            // unescaping: two tight passes (memchr, then a byte test) instead of one three-way
            // test per byte.
            let n = match special_in_words(rest, 2) {
                Ok(i) if rest[i] == b'"' => i,
                Ok(_) => return None,
                Err(clean) => {
                    let n = clean + memchr::memchr(b'"', &rest[clean..])?;
                    if needs_unescaping(&rest[clean..n]) {
                        return None;
                    }
                    n
                }
            };
            // Invalid UTF-8 is refused here (the full parser says where).
            let s = std::str::from_utf8(&rest[..n]).ok()?;
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

        /// A value as [`Cursor::value`] checks it, without building it.
        fn skip_value(&mut self) -> Option<()> {
            match self.peek()? {
                b'"' => self.string().map(drop),
                _ => self.value().map(drop),
            }
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
        // A parser of whole segments: the same, for a first and a second line.
        let mut whole = LineParser::whole();
        for _ in 0..2 {
            assert_eq!(whole.parse(text), full, "whole");
        }
        // Projected: the same, less the other fields (and the same errors).
        let long = ["k".repeat(63), "k".repeat(64), "k".repeat(70)];
        let many = [
            "a", "b", "c", "d", "e", "f", "g", "h", "vote_id", &long[0], &long[2],
        ];
        let few_long = [&long[1][..], "a"];
        for keep in [&["a"][..], &["b", "c", "vote_id"], &[], &many, &few_long] {
            let keep = Fields::new(keep.iter().map(|f| (*f).to_owned()).collect());
            let projected = from_json_slice_projected(text, &keep);
            let want = full.clone().map(|m| {
                let mut out = Segment::new();
                for (k, v) in m
                    .iter()
                    .filter(|(k, _)| keep.names().iter().any(|f| f == k))
                {
                    out.insert(k, v.clone());
                }
                out
            });
            assert_eq!(
                projected,
                want,
                "{keep:?} of {:?}",
                String::from_utf8_lossy(text)
            );
            if let (Ok(a), Ok(b)) = (&projected, &want) {
                assert_eq!(to_bincode(a), to_bincode(b));
            }
            // A parser with a memory: the same for a line of another shape, for the first
            // sight of this one and for a second (its keys then known).
            let mut parser = LineParser::new(keep.clone());
            let vote = br#"{"vote_id": 1, "a": 2, "b":"x", "k": 3}"#;
            assert_eq!(parser.parse(vote), from_json_slice_projected(vote, &keep));
            for _ in 0..2 {
                assert_eq!(parser.parse(text), want, "{keep:?} remembering");
            }
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
        // Keys of 63, 64, 70 and 71 bytes (the length mask's last bit stands for all from 63).
        let long_keys: Vec<String> = [63, 64, 70, 71]
            .iter()
            .map(|&n| {
                format!(
                    r#"{{"{}":1,"a":"x","{}":2}}"#,
                    "k".repeat(n),
                    "k".repeat(n + 1)
                )
            })
            .collect();
        for c in cases {
            same_as_serde(c);
        }
        for c in &long_keys {
            same_as_serde(c.as_bytes());
        }
    }

    proptest! {
        #[test]
        fn the_escape_check_finds_every_backslash_and_control_byte(
            bytes in prop::collection::vec(prop_oneof![
                Just(b'\\'), Just(0x1f_u8), Just(0x00), Just(0x20), Just(0x5b), Just(0x5d),
                Just(0x7f), Just(0x80), Just(0xdc), Just(0xff), any::<u8>(),
            ], 0..40),
            clean in "[ -\\[\\]-~é𝄞]{0,40}",
        ) {
            let bytewise = |s: &[u8]| s.iter().any(|&b| b == b'\\' || b < 0x20);
            prop_assert_eq!(flat::needs_unescaping(&bytes), bytewise(&bytes));
            prop_assert!(!flat::needs_unescaping(clean.as_bytes()));
        }

        #[test]
        fn the_word_scan_finds_the_first_quote_backslash_or_control_byte(
            bytes in prop::collection::vec(prop_oneof![
                Just(b'"'), Just(b'\\'), Just(0x1f_u8), Just(0x00), Just(0x20), Just(0x21),
                Just(0x23), Just(0x5b), Just(0x5d), Just(0x7f), Just(0x80), Just(0xa0),
                Just(0xdc), Just(0xff), any::<u8>(), any::<u8>(), any::<u8>(),
            ], 0..40),
            words in 0_usize..6,
        ) {
            let whole = (bytes.len() / 8).min(words) * 8;
            let want = bytes[..whole]
                .iter()
                .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
                .ok_or(whole);
            prop_assert_eq!(flat::special_in_words(&bytes, words), want);
        }

        /// One parser over a stream of lines whose keys come from a few names, in varying
        /// order, count and spacing, with some malformed: each line parses exactly as it does
        /// alone, whatever the lines before it taught the parser.
        #[test]
        fn a_line_parser_parses_each_line_as_the_stateless_parse_does(
            lines in prop::collection::vec((
                prop::collection::vec((
                    prop_oneof![
                        Just("vote_id"), Just("voter_id"), Just("candidate"), Just("k"),
                        Just("event_time"), Just("vote"), Just("a\\b"), Just("x y"),
                    ],
                    prop_oneof![
                        Just("1".to_owned()), Just("\"cand_01\"".to_owned()),
                        Just("[1]".to_owned()), Just("1.5".to_owned()),
                        any::<i64>().prop_map(|i| i.to_string()),
                    ],
                    "[ ]{0,2}", "[ ]{0,2}",
                ), 0..6),
                any::<bool>(),
            ), 1..12),
        ) {
            let names = ["vote_id", "candidate", "event_time", "k"];
            let keep = Fields::new(names.map(String::from).into());
            let mut parser = LineParser::new(keep.clone());
            let mut whole = LineParser::whole();
            for (fields, truncate) in lines {
                let body: Vec<String> = fields
                    .iter()
                    .map(|(k, v, before, after)| format!("\"{k}\"{before}:{after}{v}"))
                    .collect();
                let mut line = format!("{{{}}}", body.join(", "));
                if truncate {
                    line.truncate(line.len() * 2 / 3);
                }
                // Both parse into the field lists of the segments they gave before, once
                // given back.
                parser.restock();
                whole.restock();
                let projected = parser.parse(line.as_bytes());
                prop_assert_eq!(
                    &projected,
                    &from_json_slice_projected(line.as_bytes(), &keep),
                    "{}", line
                );
                let all = whole.parse(line.as_bytes());
                prop_assert_eq!(&all, &from_json_slice(line.as_bytes()), "{}", line);
                crate::recycle::POOL.give_back(projected.into_iter().chain(all));
            }
        }

        #[test]
        fn the_flat_fast_path_agrees_with_serde_json_on_any_text(text in "[ {}\":,a-c0-9.eE\\\\-]{0,24}") {
            same_as_serde(text.as_bytes());
        }

        /// Lines of a flat object with bytes that are not UTF-8 (or are, in several bytes)
        /// put in a key, in a string value, or between tokens: refused, or parsed, exactly
        /// as serde_json does, whole, projected and by a parser that knows the keys.
        #[test]
        fn the_flat_fast_path_agrees_with_serde_json_on_bytes_that_are_not_utf8(
            at in 0_usize..6,
            odd in prop_oneof![
                Just(vec![0xff_u8]), Just(vec![0xc3]), Just(vec![0xe2, 0x82]),
                Just(vec![0x80]), Just(vec![0xc3, 0xa9]), Just(vec![0xf0, 0x9d, 0x84, 0x9e]),
                Just(vec![0xed, 0xa0, 0x80]), Just(vec![0xc0, 0xaf]),
            ],
        ) {
            let (before, after) = [
                (&br#"{"a"#[..], &br#"b": 1, "vote_id": "x"}"#[..]),
                (br#"{"a": 1, "vote_id": "x"#, br#"y"}"#),
                (br#"{"a": 1, "b": ""#, br#"", "c": 2}"#),
                (br#"{"a": 1,"#, br#" "c": 2}"#),
                (br#"{"a": 1"#, br#"}"#),
                (br#"{"a": "#, br#"1}"#),
            ][at];
            let text = [before, &odd[..], after].concat();
            same_as_serde(&text);
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

    /// A segment of 100,000 fields parses (fast path and full parser) and every field is
    /// found; a repeated field keeps its first place and its last value, as in small segments.
    #[test]
    fn a_segment_of_100_000_fields_finds_every_field() {
        let n = 100_000;
        let fields: Vec<String> = (0..n).map(|i| format!("\"field_{i}\":{i}")).collect();
        let flat = format!("{{{},\"field_5\":-5}}", fields.join(","));
        // A nested value sends the document to serde_json instead of the fast path.
        let nested = format!("{{{},\"field_5\":-5,\"z\":[1]}}", fields.join(","));
        for (text, extra) in [(flat, 0), (nested, 1)] {
            let seg = from_json_slice(text.as_bytes()).unwrap();
            assert_eq!(seg.len(), n + extra);
            for i in 0..n {
                let want = if i == 5 { -5 } else { i as i64 };
                assert_eq!(seg.get(&format!("field_{i}")), Some(&Value::Int(want)));
            }
            assert_eq!(seg.get("field_100000"), None);
            assert_eq!(seg.keys().nth(5), Some("field_5"));
            // The index survives bincode and clones.
            let back = from_bincode(&to_bincode(&seg)).unwrap();
            assert_eq!(back, seg);
            assert_eq!(back.get("field_99999"), Some(&Value::Int(99_999)));
        }
    }

    #[test]
    fn repeated_fields_keep_the_last_value_in_the_first_place() {
        for text in [&br#"{"a":1,"b":2,"a":3}"#[..], br#"{"a":1,"b":[2],"a":3}"#] {
            let seg = from_json_slice(text).unwrap();
            assert_eq!(seg.keys().collect::<Vec<_>>(), ["a", "b"]);
            assert_eq!(seg.get("a"), Some(&Value::Int(3)));
        }
    }

    /// Nesting is bounded: deep JSON is refused by serde_json's recursion limit, deep bincode
    /// by the value model's depth limit, each with an error instead of a stack overflow.
    #[test]
    fn deep_nesting_is_refused_with_an_error() {
        let deep = format!("{{\"a\":{}1{}}}", "[".repeat(100_000), "]".repeat(100_000));
        let err = from_json_slice(deep.as_bytes()).unwrap_err();
        assert!(
            err.starts_with("malformed JSON: recursion limit exceeded"),
            "{err}"
        );
        // The object and 126 lists: 127 levels, serde_json's most.
        let ok = format!("{{\"a\":{}1{}}}", "[".repeat(126), "]".repeat(126));
        assert!(from_json_slice(ok.as_bytes()).is_ok());

        // bincode: a map of one field whose value is a list holding a list holding … (a few
        // bytes per level, as a hostile peer or a corrupt log could send).
        let nest = |levels: usize| {
            let mut inner = Value::Null;
            for _ in 0..levels {
                inner = Value::List(vec![inner]);
            }
            let mut seg = Segment::new();
            seg.insert("a", inner);
            seg
        };
        let limit = sardonyx_windowing::value::MAX_BINARY_DEPTH;
        let fits = nest(limit - 1);
        assert_eq!(from_bincode(&to_bincode(&fits)).unwrap(), fits);
        assert_eq!(
            from_bincode(&to_bincode(&nest(limit))).unwrap_err(),
            // (bincode's rendering of an error raised inside serde.)
            format!(
                "malformed segment bytes: OtherString(\"values nested more than {limit} deep\")"
            )
        );
        // A million levels, written by hand: field count 1, name "a", then (List, 1 item) × n.
        let mut bytes = vec![1, 1, b'a'];
        for _ in 0..1_000_000 {
            bytes.extend_from_slice(&[6, 1]);
        }
        bytes.push(0);
        assert!(from_bincode(&bytes)
            .unwrap_err()
            .contains(&format!("values nested more than {limit} deep")));
    }

    /// One random change to a byte string: flip a byte, drop a range, insert a byte, or
    /// repeat a range.
    fn mutate(mut bytes: Vec<u8>, kind: u8, at: usize, len: usize, byte: u8) -> Vec<u8> {
        let n = bytes.len();
        let at = if n == 0 { 0 } else { at % n };
        match kind % 4 {
            0 if n > 0 => bytes[at] ^= byte | 1,
            1 => {
                let end = (at + len).min(n);
                bytes.drain(at..end);
            }
            2 => bytes.insert(at, byte),
            _ => {
                let end = (at + len).min(n);
                let copy = bytes[at..end].to_vec();
                bytes.splice(at..at, copy);
            }
        }
        bytes
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Arbitrary bytes: a segment or an error, never a panic.
        #[test]
        fn any_bytes_give_a_segment_or_an_error(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = from_json_slice(&bytes);
            let _ = from_bincode(&bytes);
        }

        /// Valid documents with a few random changes: a segment or an error, never a panic,
        /// and the fast path still agrees with serde_json; mutated bincode decodes or fails.
        #[test]
        fn mutated_segments_give_a_segment_or_an_error(
            seg in segment(),
            edits in prop::collection::vec((any::<u8>(), any::<usize>(), 0_usize..8, any::<u8>()), 1..4),
        ) {
            let mut json = to_json_string(&seg).into_bytes();
            let mut bin = to_bincode(&seg);
            for (kind, at, len, byte) in edits {
                json = mutate(json, kind, at, len, byte);
                bin = mutate(bin, kind, at, len, byte);
            }
            same_as_serde(&json);
            if let Ok(back) = from_bincode(&bin) {
                // Whatever decodes is a well-formed segment: it encodes and decodes again.
                prop_assert_eq!(from_bincode(&to_bincode(&back)).unwrap(), back);
            }
        }
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
