//! The value model shared by segments and window state.
//!
//! A [`Value`] is what a JSON document can hold (null, bool, integer, float, string, list, map).
//! [`Map`] is an ordered field map: field order is kept as it arrived. A field is found by a
//! linear scan while a map has at most [`Map::INDEX_FROM`] fields (which beats hashing for the
//! handful of fields a segment carries); a larger map also keeps a hash index of its fields, so
//! that a hostile object with 100,000 fields costs O(1) per lookup and O(n) to build, not O(n²)
//! (DESIGN §10).
//!
//! [`Value::write_canonical`] gives a value's **canonical bytes**, the specified encoding that
//! routing hashes (see its documentation).
//!
//! Serialization has two shapes chosen by `Serializer::is_human_readable`: natural JSON/TOML for
//! human-readable formats, and a tagged compact form for binary formats such as bincode (which
//! cannot deserialize untagged data). Both round-trip losslessly.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::fmt;
use std::hash::{Hash, Hasher};

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};

/// The string type of field names and string values: up to 24 bytes are stored inline (no
/// allocation), longer ones on the heap. A parsed segment's field names and short string values
/// then cost no allocation; it derefs to `&str` and compares, orders and hashes as one.
pub type Text = compact_str::CompactString;

/// One value of a segment field or of a window state.
#[derive(Debug, Clone, Default)]
pub enum Value {
    /// JSON null.
    #[default]
    Null,
    /// A boolean.
    Bool(bool),
    /// A signed integer.
    Int(i64),
    /// An unsigned integer too large for `i64` (kept exact).
    UInt(u64),
    /// A float.
    Float(f64),
    /// A string ([`Text`]: inline up to 24 bytes).
    Str(Text),
    /// A list of values.
    List(Vec<Value>),
    /// A map of fields.
    Map(Map),
}

impl Value {
    /// True for `Null`.
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// The value as an `i64`, for integers (and integral floats) in range.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::Int(i) => Some(i),
            Value::UInt(u) => i64::try_from(u).ok(),
            Value::Float(f) if f.fract() == 0.0 && f >= i64::MIN as f64 && f <= i64::MAX as f64 => {
                Some(f as i64)
            }
            _ => None,
        }
    }

    /// The value as an `f64`, for any number.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::Int(i) => Some(i as f64),
            Value::UInt(u) => Some(u as f64),
            Value::Float(f) => Some(f),
            _ => None,
        }
    }

    /// True for integers and floats.
    pub fn is_number(&self) -> bool {
        matches!(self, Value::Int(_) | Value::UInt(_) | Value::Float(_))
    }

    /// The string slice, for strings.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The boolean, for booleans.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// The items, for lists.
    pub fn as_list(&self) -> Option<&[Value]> {
        match self {
            Value::List(l) => Some(l),
            _ => None,
        }
    }

    /// The map, for maps.
    pub fn as_map(&self) -> Option<&Map> {
        match self {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }

    /// The value as an event time in epoch milliseconds: an integer (or integral float) of
    /// milliseconds, or an RFC 3339 string such as `2023-11-14T22:13:20Z`.
    pub fn as_event_time(&self) -> Option<i64> {
        match self {
            Value::Str(s) => chrono::DateTime::parse_from_rfc3339(s)
                .ok()
                .map(|t| t.timestamp_millis()),
            other => other.as_i64(),
        }
    }

    /// A short name of the value's type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Int(_) | Value::UInt(_) => "integer",
            Value::Float(_) => "float",
            Value::Str(_) => "string",
            Value::List(_) => "list",
            Value::Map(_) => "map",
        }
    }

    /// Appends the value's **canonical bytes** to `out`: a stable, type-tagged, length-prefixed
    /// encoding that routing hashes (DESIGN §4, "Grouping"), so it must never change (a pinned
    /// test in the engine's routing guards it). One tag byte, then:
    ///
    /// | value | tag | then |
    /// |---|---|---|
    /// | null | `0x00` | nothing |
    /// | bool | `0x01` | `0x00` (false) or `0x01` (true) |
    /// | integer in `i64` range | `0x02` | the `i64`, 8 bytes little-endian two's complement |
    /// | integer above `i64::MAX` | `0x03` | the `u64`, 8 bytes little-endian |
    /// | float | `0x04` | the IEEE-754 bits of the `f64`, 8 bytes little-endian |
    /// | string | `0x05` | byte length (`u64`, 8 bytes LE), then the UTF-8 bytes |
    /// | list | `0x06` | item count (`u64`, 8 bytes LE), then each item's canonical bytes |
    /// | map | `0x07` | field count (`u64`, 8 bytes LE), then per field **in byte order of the names** (not arrival order): the name as a string's length and bytes (no tag), then the value's canonical bytes |
    ///
    /// So the bytes depend on the value, not on how it was written or stored: an integer is
    /// encoded by its number whether it is held as `Int` or `UInt`; a float by its value, so
    /// `1.0`, `1.00` and `1e0` are the same bytes, but a float is never an integer (`1.0` and
    /// `1` differ, as they are different group keys under [`Value`]'s equality); `-0.0` and
    /// `0.0` differ, as do NaNs with different bits (their order differs too). Two maps with the
    /// same fields in another order give the same bytes.
    pub fn write_canonical(&self, out: &mut Vec<u8>) {
        fn len(out: &mut Vec<u8>, n: usize) {
            out.extend_from_slice(&(n as u64).to_le_bytes());
        }
        match self {
            Value::Null => out.push(0x00),
            Value::Bool(b) => out.extend_from_slice(&[0x01, u8::from(*b)]),
            Value::Int(i) => {
                out.push(0x02);
                out.extend_from_slice(&i.to_le_bytes());
            }
            Value::UInt(u) => match i64::try_from(*u) {
                Ok(i) => Value::Int(i).write_canonical(out),
                Err(_) => {
                    out.push(0x03);
                    out.extend_from_slice(&u.to_le_bytes());
                }
            },
            Value::Float(f) => {
                out.push(0x04);
                out.extend_from_slice(&f.to_bits().to_le_bytes());
            }
            Value::Str(s) => {
                out.push(0x05);
                len(out, s.len());
                out.extend_from_slice(s.as_bytes());
            }
            Value::List(l) => {
                out.push(0x06);
                len(out, l.len());
                for v in l {
                    v.write_canonical(out);
                }
            }
            Value::Map(m) => {
                out.push(0x07);
                len(out, m.len());
                let mut fields: Vec<&(Text, Value)> = m.entries().iter().collect();
                // Names are unique, so this order is total.
                fields.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
                for (k, v) in fields {
                    len(out, k.len());
                    out.extend_from_slice(k.as_bytes());
                    v.write_canonical(out);
                }
            }
        }
    }

    fn rank(&self) -> u8 {
        match self {
            Value::Null => 0,
            Value::Bool(_) => 1,
            Value::Int(_) => 2,
            Value::UInt(_) => 3,
            Value::Float(_) => 4,
            Value::Str(_) => 5,
            Value::List(_) => 6,
            Value::Map(_) => 7,
        }
    }
}

/// Values are totally ordered (floats by `f64::total_cmp`) so they can key maps and groups.
/// Values of different variants order by variant; `Int(1)` and `Float(1.0)` are different keys.
impl Ord for Value {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (Value::Null, Value::Null) => Ordering::Equal,
            (Value::Bool(a), Value::Bool(b)) => a.cmp(b),
            (Value::Int(a), Value::Int(b)) => a.cmp(b),
            (Value::UInt(a), Value::UInt(b)) => a.cmp(b),
            (Value::Float(a), Value::Float(b)) => a.total_cmp(b),
            (Value::Str(a), Value::Str(b)) => a.cmp(b),
            (Value::List(a), Value::List(b)) => a.cmp(b),
            (Value::Map(a), Value::Map(b)) => a.cmp(b),
            (a, b) => a.rank().cmp(&b.rank()),
        }
    }
}

impl PartialOrd for Value {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Value {
    /// `cmp(..) == Equal`, with integers and strings (group keys, looked up in a hash map per
    /// segment) compared directly.
    #[inline]
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Value::Int(a), Value::Int(b)) => a == b,
            (Value::Str(a), Value::Str(b)) => a == b,
            _ => self.cmp(other) == Ordering::Equal,
        }
    }
}

impl Eq for Value {}

impl Hash for Value {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.rank().hash(state);
        match self {
            Value::Null => {}
            Value::Bool(b) => b.hash(state),
            Value::Int(i) => i.hash(state),
            Value::UInt(u) => u.hash(state),
            Value::Float(f) => f.to_bits().hash(state),
            Value::Str(s) => s.hash(state),
            Value::List(l) => l.hash(state),
            Value::Map(m) => m.hash(state),
        }
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}
impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Value::Int(i)
    }
}
impl From<i32> for Value {
    fn from(i: i32) -> Self {
        Value::Int(i64::from(i))
    }
}
impl From<u64> for Value {
    fn from(u: u64) -> Self {
        match i64::try_from(u) {
            Ok(i) => Value::Int(i),
            Err(_) => Value::UInt(u),
        }
    }
}
impl From<f64> for Value {
    fn from(f: f64) -> Self {
        Value::Float(f)
    }
}
impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Str(Text::new(s))
    }
}
impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Str(Text::from(s))
    }
}
impl From<Text> for Value {
    fn from(s: Text) -> Self {
        Value::Str(s)
    }
}
impl From<Vec<Value>> for Value {
    fn from(l: Vec<Value>) -> Self {
        Value::List(l)
    }
}
impl From<Map> for Value {
    fn from(m: Map) -> Self {
        Value::Map(m)
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(o: Option<T>) -> Self {
        o.map_or(Value::Null, Into::into)
    }
}

/// Writes the value as compact JSON (non-finite floats as `null`, as JSON has no other spelling);
/// the text of [`Value::write_json`].
impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = String::new();
        self.write_json(&mut out);
        f.write_str(&out)
    }
}

impl Value {
    /// Appends the value as compact JSON to `out` (what `Display` writes; non-finite floats as
    /// `null`). Faster than `Display`: integers and strings are copied in, not formatted.
    pub fn write_json(&self, out: &mut String) {
        match self {
            Value::Null => out.push_str("null"),
            Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Value::Int(i) => out.push_str(itoa::Buffer::new().format(*i)),
            Value::UInt(u) => out.push_str(itoa::Buffer::new().format(*u)),
            Value::Float(x) if !x.is_finite() => out.push_str("null"),
            // Debug always writes a `.` or an exponent, so the text parses back as a float.
            Value::Float(x) => {
                use fmt::Write;
                write!(out, "{x:?}").expect("writing into a String cannot fail");
            }
            Value::Str(s) => write_json_string(out, s),
            Value::List(l) => {
                out.push('[');
                for (i, v) in l.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    v.write_json(out);
                }
                out.push(']');
            }
            Value::Map(m) => m.write_json(out),
        }
    }
}

/// Appends `s` as a JSON string: runs of characters that need no escape are copied whole (a
/// firing's JSON line is mostly such runs), only `"`, `\` and control characters are escaped.
fn write_json_string(out: &mut String, s: &str) {
    // Names, ids and most values need no escape at all: one tight test, then one copy.
    if !s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        out.reserve(s.len() + 2);
        out.push('"');
        out.push_str(s);
        out.push('"');
        return;
    }
    out.push('"');
    let mut clean = 0;
    for (i, b) in s.bytes().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f => "",
            _ => continue,
        };
        // `b` is ASCII, so `clean..i` and `i + 1..` are on character boundaries.
        out.push_str(&s[clean..i]);
        if escape.is_empty() {
            use fmt::Write;
            write!(out, "\\u{:04x}", b).expect("writing into a String cannot fail");
        } else {
            out.push_str(escape);
        }
        clean = i + 1;
    }
    out.push_str(&s[clean..]);
    out.push('"');
}

/// Whether two field names are equal: `a == b`, without a call of the C library's `memcmp` for
/// names of up to 16 bytes (most of them) ([`bytes_eq`]). Finding a field by name in a small
/// segment is a few of these per event.
#[inline]
pub fn field_eq(a: &str, b: &str) -> bool {
    bytes_eq(a.as_bytes(), b.as_bytes())
}

/// Whether two byte strings are equal: `a == b`, with strings of up to 16 bytes compared as two
/// overlapping words (or three bytes) instead of by a call of `memcmp`.
#[inline]
pub fn bytes_eq(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    let word4 = |s: &[u8], at: usize| u32::from_le_bytes(s[at..at + 4].try_into().expect("4"));
    let word8 = |s: &[u8], at: usize| u64::from_le_bytes(s[at..at + 8].try_into().expect("8"));
    match n {
        0 => true,
        // Bytes 0, n/2 and n-1 are every byte of a name of 1 to 3 bytes.
        1..=3 => a[0] == b[0] && a[n / 2] == b[n / 2] && a[n - 1] == b[n - 1],
        4..=7 => word4(a, 0) == word4(b, 0) && word4(a, n - 4) == word4(b, n - 4),
        8..=16 => word8(a, 0) == word8(b, 0) && word8(a, n - 8) == word8(b, n - 8),
        _ => a == b,
    }
}

/// An ordered map from field name to value; keys are unique, insertion order is kept.
///
/// Equality, order and hashing are those of the field list in order (the index is derived
/// data and takes no part in them).
#[derive(Clone)]
pub struct Map {
    repr: Repr,
}

/// The emptied field list of a map ([`Map::into_spare`]), kept so that a later map can hold its
/// fields without an allocation ([`Map::from_spare`]).
pub struct SpareFields(Vec<(Text, Value)>);

impl SpareFields {
    /// How many fields it holds without growing.
    pub fn capacity(&self) -> usize {
        self.0.capacity()
    }
}

impl fmt::Debug for SpareFields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpareFields({})", self.capacity())
    }
}

/// A map's fields: a plain list up to [`Map::INDEX_FROM`] fields, a list with an index beyond.
/// The index lives behind one box so that a `Map`, and so every `Value`, stays as small as a
/// `Vec` (the enum fits in the `Vec`'s niche).
#[derive(Clone)]
enum Repr {
    Small(Vec<(Text, Value)>),
    Indexed(Box<Indexed>),
}

#[derive(Clone)]
struct Indexed {
    entries: Vec<(Text, Value)>,
    /// Position of each field in `entries`. std's `RandomState` (SipHash with random keys), so
    /// that field names chosen to collide cannot make lookups linear again.
    index: HashMap<Text, usize>,
}

impl Default for Map {
    fn default() -> Self {
        Map {
            repr: Repr::Small(Vec::new()),
        }
    }
}

impl fmt::Debug for Map {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Map")
            .field("entries", &self.entries())
            .finish()
    }
}

impl PartialEq for Map {
    fn eq(&self, other: &Self) -> bool {
        self.entries() == other.entries()
    }
}

impl Eq for Map {}

impl PartialOrd for Map {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Map {
    fn cmp(&self, other: &Self) -> Ordering {
        self.entries().cmp(other.entries())
    }
}

impl Hash for Map {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.entries().hash(state);
    }
}

impl Map {
    /// Above this many fields a map keeps a hash index of its fields; up to it, a field is
    /// found by a linear scan (a few short string compares, faster than hashing the name).
    pub const INDEX_FROM: usize = 16;

    /// An empty map.
    pub fn new() -> Self {
        Map::default()
    }

    /// A map of these entries, whose keys the caller knows to be distinct (not checked).
    pub(crate) fn from_distinct(entries: Vec<(Text, Value)>) -> Self {
        debug_assert!(entries
            .iter()
            .enumerate()
            .all(|(i, (k, _))| entries[..i].iter().all(|(j, _)| j != k)));
        Map::of_entries(entries)
    }

    /// The map of `entries` (distinct keys), indexed if it is large.
    fn of_entries(entries: Vec<(Text, Value)>) -> Self {
        if entries.len() <= Self::INDEX_FROM {
            return Map {
                repr: Repr::Small(entries),
            };
        }
        let index = entries
            .iter()
            .enumerate()
            .map(|(i, (k, _))| (k.clone(), i))
            .collect();
        Map {
            repr: Repr::Indexed(Box::new(Indexed { entries, index })),
        }
    }

    /// Empties the map and keeps its field list (its allocation) for [`Map::from_spare`];
    /// `None` for a map with an index, or one that never had room for a field.
    pub fn into_spare(self) -> Option<SpareFields> {
        match self.repr {
            Repr::Small(mut entries) if entries.capacity() > 0 => {
                entries.clear();
                Some(SpareFields(entries))
            }
            _ => None,
        }
    }

    /// An empty map that holds its fields in `spare`'s list (no allocation until it outgrows
    /// it).
    pub fn from_spare(spare: SpareFields) -> Self {
        Map {
            repr: Repr::Small(spare.0),
        }
    }

    /// An empty map with room for `n` fields.
    pub fn with_capacity(n: usize) -> Self {
        Map {
            repr: Repr::Small(Vec::with_capacity(n)),
        }
    }

    /// The fields in order.
    #[inline]
    fn entries(&self) -> &[(Text, Value)] {
        match &self.repr {
            Repr::Small(entries) => entries,
            Repr::Indexed(big) => &big.entries,
        }
    }

    /// The position of field `key` in the entries.
    #[inline]
    fn position(&self, key: &str) -> Option<usize> {
        match &self.repr {
            Repr::Small(entries) => entries.iter().position(|(k, _)| field_eq(k, key)),
            Repr::Indexed(big) => big.index.get(key).copied(),
        }
    }

    /// The value of field `key`, if present.
    #[inline]
    pub fn get(&self, key: &str) -> Option<&Value> {
        match &self.repr {
            // The scan without positions: the hot path for small segments.
            Repr::Small(entries) => entries
                .iter()
                .find(|(k, _)| field_eq(k, key))
                .map(|(_, v)| v),
            Repr::Indexed(big) => big.index.get(key).map(|&i| &big.entries[i].1),
        }
    }

    /// A mutable reference to the value of field `key`, if present.
    pub fn get_mut(&mut self, key: &str) -> Option<&mut Value> {
        let i = self.position(key)?;
        let entries = match &mut self.repr {
            Repr::Small(entries) => entries,
            Repr::Indexed(big) => &mut big.entries,
        };
        Some(&mut entries[i].1)
    }

    /// True if field `key` is present.
    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Sets field `key`, replacing (in place) and returning any previous value.
    pub fn insert(&mut self, key: impl Into<Text>, value: impl Into<Value>) -> Option<Value> {
        let key = key.into();
        let value = value.into();
        if let Some(slot) = self.get_mut(&key) {
            return Some(std::mem::replace(slot, value));
        }
        self.push_distinct(key, value);
        None
    }

    /// Appends field `key`, which the caller knows is not in the map: [`Map::insert`] without
    /// the search for it (for a parser that keeps track of the fields it has set). A key already
    /// present would be held twice; that is checked in debug builds only.
    pub fn push_distinct(&mut self, key: Text, value: Value) {
        debug_assert!(!self.contains_key(&key), "field {key:?} pushed twice");
        match &mut self.repr {
            Repr::Indexed(big) => {
                big.index.insert(key.clone(), big.entries.len());
                big.entries.push((key, value));
            }
            Repr::Small(entries) => {
                entries.push((key, value));
                if entries.len() > Self::INDEX_FROM {
                    let entries = std::mem::take(entries);
                    *self = Map::of_entries(entries);
                }
            }
        }
    }

    /// Removes field `key`, keeping the order of the others.
    pub fn remove(&mut self, key: &str) -> Option<Value> {
        let i = self.position(key)?;
        match &mut self.repr {
            Repr::Small(entries) => Some(entries.remove(i).1),
            Repr::Indexed(big) => {
                let (_, value) = big.entries.remove(i);
                // The fields after `i` moved up by one (O(n), as the removal itself).
                big.index.remove(key);
                for p in big.index.values_mut() {
                    if *p > i {
                        *p -= 1;
                    }
                }
                if big.entries.len() <= Self::INDEX_FROM {
                    let entries = std::mem::take(&mut big.entries);
                    *self = Map::of_entries(entries);
                }
                Some(value)
            }
        }
    }

    /// The number of fields.
    pub fn len(&self) -> usize {
        self.entries().len()
    }

    /// True when there are no fields.
    pub fn is_empty(&self) -> bool {
        self.entries().is_empty()
    }

    /// The fields in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.entries().iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The field names in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries().iter().map(|(k, _)| k.as_str())
    }
}

impl<K: Into<Text>> FromIterator<(K, Value)> for Map {
    fn from_iter<I: IntoIterator<Item = (K, Value)>>(iter: I) -> Self {
        let mut m = Map::new();
        for (k, v) in iter {
            m.insert(k, v);
        }
        m
    }
}

impl IntoIterator for Map {
    type Item = (Text, Value);
    type IntoIter = std::vec::IntoIter<(Text, Value)>;
    fn into_iter(self) -> Self::IntoIter {
        match self.repr {
            Repr::Small(entries) => entries.into_iter(),
            Repr::Indexed(big) => big.entries.into_iter(),
        }
    }
}

/// Writes the map as a compact JSON object (the text of [`Map::write_json`]).
impl fmt::Display for Map {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = String::new();
        self.write_json(&mut out);
        f.write_str(&out)
    }
}

impl Map {
    /// Appends the map as a compact JSON object to `out` (what `Display` writes).
    pub fn write_json(&self, out: &mut String) {
        out.push('{');
        for (i, (k, v)) in self.entries().iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            write_json_string(out, k);
            out.push(':');
            v.write_json(out);
        }
        out.push('}');
    }
}

impl Serialize for Map {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut m = serializer.serialize_map(Some(self.len()))?;
        for (k, v) in self.entries() {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for Map {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MapVisitor;
        impl<'de> Visitor<'de> for MapVisitor {
            type Value = Map;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Map, A::Error> {
                let mut m = Map::with_capacity(access.size_hint().unwrap_or(0).min(4096));
                while let Some((k, v)) = access.next_entry::<Text, Value>()? {
                    m.insert(k, v);
                }
                Ok(m)
            }
        }
        deserializer.deserialize_map(MapVisitor)
    }
}

/// The tagged form used by binary formats (borrowed, for serializing).
#[derive(Serialize)]
enum TaggedRef<'a> {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(&'a str),
    List(&'a [Value]),
    Map(&'a Map),
}

/// The tagged form used by binary formats (owned, for deserializing).
#[derive(Deserialize)]
enum Tagged {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(Text),
    List(Vec<Value>),
    Map(Map),
}

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if !serializer.is_human_readable() {
            let tagged = match self {
                Value::Null => TaggedRef::Null,
                Value::Bool(b) => TaggedRef::Bool(*b),
                Value::Int(i) => TaggedRef::Int(*i),
                Value::UInt(u) => TaggedRef::UInt(*u),
                Value::Float(f) => TaggedRef::Float(*f),
                Value::Str(s) => TaggedRef::Str(s),
                Value::List(l) => TaggedRef::List(l),
                Value::Map(m) => TaggedRef::Map(m),
            };
            return tagged.serialize(serializer);
        }
        match self {
            Value::Null => serializer.serialize_unit(),
            Value::Bool(b) => serializer.serialize_bool(*b),
            Value::Int(i) => serializer.serialize_i64(*i),
            Value::UInt(u) => serializer.serialize_u64(*u),
            Value::Float(f) => serializer.serialize_f64(*f),
            Value::Str(s) => serializer.serialize_str(s),
            Value::List(l) => l.serialize(serializer),
            Value::Map(m) => m.serialize(serializer),
        }
    }
}

/// The deepest nesting of lists and maps that the binary form is decoded to. Binary input
/// (bincode from the network or the log) has no depth limit of its own, and decoding recurses:
/// without one, a few bytes per level could overflow the stack. JSON is limited by serde_json
/// (128 levels), and a window state adds a few levels around a segment, so honest data stays
/// far below this.
pub const MAX_BINARY_DEPTH: usize = 256;

thread_local! {
    /// Lists and maps being decoded from a binary form on this thread, outermost first.
    static BINARY_DEPTH: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Counts one level of binary decoding while alive.
struct DepthGuard;

impl DepthGuard {
    fn enter<E: de::Error>() -> Result<DepthGuard, E> {
        BINARY_DEPTH.with(|d| {
            if d.get() >= MAX_BINARY_DEPTH {
                return Err(E::custom(format_args!(
                    "values nested more than {MAX_BINARY_DEPTH} deep"
                )));
            }
            d.set(d.get() + 1);
            Ok(DepthGuard)
        })
    }
}

impl Drop for DepthGuard {
    fn drop(&mut self) {
        BINARY_DEPTH.with(|d| d.set(d.get() - 1));
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if !deserializer.is_human_readable() {
            let _depth = DepthGuard::enter::<D::Error>()?;
            return Ok(match Tagged::deserialize(deserializer)? {
                Tagged::Null => Value::Null,
                Tagged::Bool(b) => Value::Bool(b),
                Tagged::Int(i) => Value::Int(i),
                Tagged::UInt(u) => Value::UInt(u),
                Tagged::Float(f) => Value::Float(f),
                Tagged::Str(s) => Value::Str(s),
                Tagged::List(l) => Value::List(l),
                Tagged::Map(m) => Value::Map(m),
            });
        }
        deserializer.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Value::deserialize(d)
    }
    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }
    fn visit_i64<E: de::Error>(self, i: i64) -> Result<Value, E> {
        Ok(Value::Int(i))
    }
    fn visit_u64<E: de::Error>(self, u: u64) -> Result<Value, E> {
        Ok(Value::from(u))
    }
    fn visit_f64<E: de::Error>(self, f: f64) -> Result<Value, E> {
        Ok(Value::Float(f))
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Value, E> {
        Ok(Value::Str(Text::new(s)))
    }
    fn visit_string<E: de::Error>(self, s: String) -> Result<Value, E> {
        Ok(Value::Str(Text::from(s)))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut l = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(v) = seq.next_element()? {
            l.push(v);
        }
        Ok(Value::List(l))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let mut m = Map::with_capacity(access.size_hint().unwrap_or(0).min(4096));
        while let Some((k, v)) = access.next_entry::<Text, Value>()? {
            m.insert(k, v);
        }
        Ok(Value::Map(m))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// `field_eq` is `==`: names of every length up to 40, equal or differing in one byte
        /// anywhere (UTF-8 included).
        #[test]
        fn field_eq_is_string_equality(
            a in "[a-c_é]{0,40}",
            other in "[a-c_é]{0,40}",
            flip in proptest::prelude::any::<proptest::sample::Index>(),
        ) {
            proptest::prop_assert_eq!(field_eq(&a, &other), a == other);
            proptest::prop_assert!(field_eq(&a, &a.clone()));
            if !a.is_empty() {
                // The same length, one byte different (still ASCII where it was).
                let mut bytes = a.clone().into_bytes();
                let i = flip.index(bytes.len());
                if bytes[i].is_ascii() {
                    bytes[i] = if bytes[i] == b'a' { b'b' } else { b'a' };
                    let b = String::from_utf8(bytes).expect("one ASCII byte changed");
                    proptest::prop_assert_eq!(field_eq(&a, &b), a == b);
                }
            }
        }
    }

    fn sample() -> Value {
        let mut m = Map::new();
        m.insert("vote_id", 7_i64);
        m.insert("candidate", "cand_01");
        m.insert("big", u64::MAX);
        m.insert("ratio", 0.1_f64);
        m.insert("whole", 3.0_f64);
        m.insert("tags", Value::List(vec![Value::Null, Value::Bool(true)]));
        Value::Map(m)
    }

    fn any_scalar() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            (-3_i64..3).prop_map(Value::Int),
            (0_u64..3).prop_map(Value::UInt),
            prop_oneof![Just(0.0), Just(-0.0), Just(1.0), Just(f64::NAN)].prop_map(Value::Float),
            "[ab]{0,2}".prop_map(|s| Value::from(s.as_str())),
        ]
    }

    proptest::proptest! {
        /// Equality is exactly `cmp == Equal`, also for lists of values (the fast paths of
        /// `eq` must not disagree with the order).
        #[test]
        fn equality_agrees_with_the_order(
            a in any_scalar(),
            b in any_scalar(),
            l in proptest::collection::vec(any_scalar(), 0..3),
            r in proptest::collection::vec(any_scalar(), 0..3),
        ) {
            proptest::prop_assert_eq!(a == b, a.cmp(&b) == Ordering::Equal);
            let (l, r) = (Value::List(l), Value::List(r));
            proptest::prop_assert_eq!(l == r, l.cmp(&r) == Ordering::Equal);
        }
    }

    #[test]
    fn json_round_trip_is_lossless_and_keeps_order() {
        let v = sample();
        let json = serde_json::to_string(&v).unwrap();
        assert_eq!(
            json,
            r#"{"vote_id":7,"candidate":"cand_01","big":18446744073709551615,"ratio":0.1,"whole":3.0,"tags":[null,true]}"#
        );
        let back: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(back, v);
        assert_eq!(v.to_string(), json);
    }

    #[test]
    fn bincode_round_trip() {
        let v = sample();
        let cfg = bincode::config::standard();
        let bytes = bincode::serde::encode_to_vec(&v, cfg).unwrap();
        let (back, _): (Value, usize) = bincode::serde::decode_from_slice(&bytes, cfg).unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn event_times() {
        assert_eq!(
            Value::Int(1_700_000_000_000).as_event_time(),
            Some(1_700_000_000_000)
        );
        assert_eq!(
            Value::from("2023-11-14T22:13:20Z").as_event_time(),
            Some(1_700_000_000_000)
        );
        assert_eq!(
            Value::from("2023-11-14T23:13:20.5+01:00").as_event_time(),
            Some(1_700_000_000_500)
        );
        assert_eq!(Value::from("yesterday").as_event_time(), None);
        assert_eq!(Value::Bool(true).as_event_time(), None);
    }

    /// One operation on a map, for the model test below.
    #[derive(Debug, Clone)]
    enum Op {
        Insert(String, i64),
        Remove(String),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        // Few distinct names, so inserts replace and removes hit; many operations, so maps grow
        // past the index threshold and shrink below it again.
        let name = (0_u32..40).prop_map(|i| format!("f{i}"));
        prop_oneof![
            3 => (name.clone(), any::<i64>()).prop_map(|(k, v)| Op::Insert(k, v)),
            1 => name.prop_map(Op::Remove),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

        /// A map (indexed above `INDEX_FROM` fields, scanned below) behaves exactly as a plain
        /// list of fields in arrival order: same lookups, same order, same equality and hash.
        #[test]
        fn map_agrees_with_a_field_list(ops in proptest::collection::vec(op(), 0..120)) {
            let mut m = Map::new();
            let mut model: Vec<(String, i64)> = Vec::new();
            for op in ops {
                match op {
                    Op::Insert(k, v) => {
                        let old = model.iter_mut().find(|(j, _)| *j == k).map(|(_, w)| std::mem::replace(w, v));
                        if old.is_none() {
                            model.push((k.clone(), v));
                        }
                        proptest::prop_assert_eq!(m.insert(k.as_str(), v), old.map(Value::Int));
                    }
                    Op::Remove(k) => {
                        let i = model.iter().position(|(j, _)| *j == k);
                        let old = i.map(|i| model.remove(i).1);
                        proptest::prop_assert_eq!(m.remove(&k), old.map(Value::Int));
                    }
                }
                proptest::prop_assert_eq!(
                    matches!(m.repr, Repr::Indexed(_)),
                    m.len() > Map::INDEX_FROM
                );
                for i in 0..40 {
                    let k = format!("f{i}");
                    let want = model.iter().find(|(j, _)| *j == k).map(|(_, v)| Value::Int(*v));
                    proptest::prop_assert_eq!(m.get(&k).cloned(), want.clone());
                    proptest::prop_assert_eq!(m.get_mut(&k).map(|v| v.clone()), want);
                }
                let plain = Map {
                    repr: Repr::Small(m.entries().to_vec()),
                };
                proptest::prop_assert_eq!(&plain, &m);
                let hash = |x: &Map| {
                    let mut h = std::collections::hash_map::DefaultHasher::new();
                    x.hash(&mut h);
                    h.finish()
                };
                proptest::prop_assert_eq!(hash(&plain), hash(&m));
            }
            let keys: Vec<&str> = m.keys().collect();
            let want: Vec<&str> = model.iter().map(|(k, _)| k.as_str()).collect();
            proptest::prop_assert_eq!(keys, want);
        }
    }

    #[test]
    fn a_large_map_finds_every_field_and_keeps_the_first_position_of_a_repeat() {
        let n = 100_000;
        let json = format!(
            "{{{},\"f7\":\"again\"}}",
            (0..n)
                .map(|i| format!("\"f{i}\":{i}"))
                .collect::<Vec<_>>()
                .join(",")
        );
        let Value::Map(m) = serde_json::from_str::<Value>(&json).unwrap() else {
            panic!("an object parses to a map");
        };
        assert_eq!(m.len(), n);
        for i in 0..n {
            let want = if i == 7 {
                Value::from("again")
            } else {
                Value::Int(i as i64)
            };
            assert_eq!(m.get(&format!("f{i}")), Some(&want), "f{i}");
        }
        assert_eq!(m.get("f100000"), None);
        assert_eq!(m.keys().nth(7), Some("f7"));
        assert_eq!(m.keys().last(), Some("f99999"));
    }

    /// The canonical bytes are specified (see `write_canonical`): pinned here byte for byte.
    #[test]
    fn canonical_bytes_are_as_specified() {
        let bytes = |v: &Value| {
            let mut out = Vec::new();
            v.write_canonical(&mut out);
            out
        };
        assert_eq!(bytes(&Value::Null), [0]);
        assert_eq!(bytes(&Value::Bool(true)), [1, 1]);
        assert_eq!(
            bytes(&Value::Int(-2)),
            [2, 0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]
        );
        assert_eq!(bytes(&Value::UInt(5)), bytes(&Value::Int(5)));
        assert_eq!(
            bytes(&Value::UInt(u64::MAX)),
            [3, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]
        );
        assert_eq!(bytes(&Value::Float(1.0)), [4, 0, 0, 0, 0, 0, 0, 0xf0, 0x3f]);
        assert_ne!(bytes(&Value::Float(1.0)), bytes(&Value::Int(1)));
        assert_ne!(bytes(&Value::Float(0.0)), bytes(&Value::Float(-0.0)));
        assert_eq!(
            bytes(&Value::from("ab")),
            [5, 2, 0, 0, 0, 0, 0, 0, 0, b'a', b'b']
        );
        assert_eq!(
            bytes(&Value::List(vec![Value::Null, Value::Bool(false)])),
            [6, 2, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]
        );
        let ab: Value = serde_json::from_str(r#"{"b":null,"a":true}"#).unwrap();
        let ba: Value = serde_json::from_str(r#"{"a":true,"b":null}"#).unwrap();
        assert_eq!(
            bytes(&ab),
            [
                7, 2, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, b'a', 1, 1, 1, 0, 0, 0, 0, 0, 0,
                0, b'b', 0
            ]
        );
        assert_eq!(bytes(&ab), bytes(&ba));
        // How an integral float is written does not matter; that it is a float does.
        let floats: Vec<Value> = ["1.0", "1.00", "1e0", "10e-1"]
            .iter()
            .map(|t| serde_json::from_str(t).unwrap())
            .collect();
        assert!(floats.iter().all(|f| bytes(f) == bytes(&Value::Float(1.0))));
        // Length prefixes keep concatenations apart.
        let l = |a: &str, b: &str| bytes(&Value::List(vec![Value::from(a), Value::from(b)]));
        assert_ne!(l("ab", "c"), l("a", "bc"));
    }

    /// The index costs a large map one box, and small maps nothing: a `Map` is as small as
    /// a `Vec`, and a `Value` no larger than before it had an index.
    #[test]
    fn values_stay_small() {
        assert_eq!(std::mem::size_of::<Map>(), std::mem::size_of::<Vec<u8>>());
        assert_eq!(std::mem::size_of::<Value>(), 32);
    }

    #[test]
    fn insert_replaces_in_place() {
        let mut m = Map::new();
        m.insert("a", 1_i64);
        m.insert("b", 2_i64);
        assert_eq!(m.insert("a", 3_i64), Some(Value::Int(1)));
        assert_eq!(m.keys().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(m.get("a"), Some(&Value::Int(3)));
    }
}
