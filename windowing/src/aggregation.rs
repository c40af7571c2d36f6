//! Aggregations: how a window's state is built from segments.
//!
//! An aggregation turns a segment into an *update* (the payload of a logged transition) with
//! [`Aggregation::create_update`], folds updates into the state with
//! [`Aggregation::apply_update`], and merges two states with [`Aggregation::merge`] (sessions).
//! Only updates are logged; replaying them with `apply_update` rebuilds the state exactly, so
//! `apply_update` must be deterministic and must not fail.
//!
//! Built-ins: [`count`], [`sum`], [`min`], [`max`] (and [`min_with_init`], [`max_with_init`]),
//! [`average`], [`collect`], [`collect_by_key`]. Users register their own by implementing the
//! trait.

use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;

use crate::error::AggregationError;
use crate::value::{Map, Text, Value};

/// A window aggregation. Implementations must be pure and deterministic.
pub trait Aggregation: Send + Sync {
    /// A short name, for messages and debugging (e.g. `count`, `sum`).
    fn name(&self) -> &str;
    /// The state of an extent that has seen no segment.
    fn init(&self) -> Value;
    /// The update (transition payload) that `segment` makes to `state`. An error rejects the
    /// segment (it goes to the error path with the message); no state changes.
    fn create_update(&self, state: &Value, segment: &Map) -> Result<Value, AggregationError>;
    /// The state after applying `update` (made by `create_update`) to `state`.
    fn apply_update(&self, state: Value, update: &Value) -> Value;
    /// [`Aggregation::apply_update`] on a state in place: the same new state. Sums and counts
    /// add an integer where the state is, without moving the state out and back.
    fn apply_update_in_place(&self, state: &mut Value, update: &Value) {
        *state = self.apply_update(std::mem::take(state), update);
    }
    /// The state of two merged sessions; `a` is the earlier one. Should be associative and
    /// commutative for session results to be independent of arrival order.
    fn merge(&self, a: Value, b: Value) -> Value;
    /// True if `create_update` ignores its `state` argument (the update is the segment's
    /// alone): the update is then made from a `Null` state without looking the extent up, and
    /// a segment that falls into several extents (sliding windows) has its update made once,
    /// for all of them. False unless an implementation says so.
    fn update_ignores_state(&self) -> bool {
        false
    }
}

impl fmt::Debug for dyn Aggregation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Aggregation({})", self.name())
    }
}

/// The built-in aggregation called `name`, with its field argument where it takes one
/// (`sum`, `min`, `max`, `average`, `collect_by_key`); `None` for an unknown name or a missing
/// or superfluous argument.
pub fn builtin(name: &str, field: Option<&str>) -> Option<Arc<dyn Aggregation>> {
    match (name, field) {
        ("count", None) => Some(count()),
        ("collect", None) => Some(collect()),
        ("sum", Some(f)) => Some(sum(f)),
        ("min", Some(f)) => Some(min(f)),
        ("max", Some(f)) => Some(max(f)),
        ("average", Some(f)) => Some(average(f)),
        ("collect_by_key", Some(f)) => Some(collect_by_key(f)),
        _ => None,
    }
}

/// Counts segments: init `0`, each segment adds 1.
pub fn count() -> Arc<dyn Aggregation> {
    Arc::new(Count)
}

/// Sums `field`: init `0`; integers stay integers (an overflowing sum becomes a float), a float
/// makes the sum a float.
pub fn sum(field: &str) -> Arc<dyn Aggregation> {
    Arc::new(Sum {
        field: field.to_owned(),
    })
}

/// The least value of `field`: `null` until the first value.
pub fn min(field: &str) -> Arc<dyn Aggregation> {
    Arc::new(Extremum {
        field: field.to_owned(),
        init: Value::Null,
        keep: Ordering::Less,
    })
}

/// The least of `init` and the values of `field`.
pub fn min_with_init(field: &str, init: impl Into<Value>) -> Arc<dyn Aggregation> {
    Arc::new(Extremum {
        field: field.to_owned(),
        init: init.into(),
        keep: Ordering::Less,
    })
}

/// The greatest value of `field`: `null` until the first value.
pub fn max(field: &str) -> Arc<dyn Aggregation> {
    Arc::new(Extremum {
        field: field.to_owned(),
        init: Value::Null,
        keep: Ordering::Greater,
    })
}

/// The greatest of `init` and the values of `field`.
pub fn max_with_init(field: &str, init: impl Into<Value>) -> Arc<dyn Aggregation> {
    Arc::new(Extremum {
        field: field.to_owned(),
        init: init.into(),
        keep: Ordering::Greater,
    })
}

/// The mean of `field`: state `{"n": count, "sum": sum, "average": sum / n}`; init
/// `{"n": 0, "sum": 0, "average": null}`. `average` is always a float.
pub fn average(field: &str) -> Arc<dyn Aggregation> {
    Arc::new(Average {
        field: field.to_owned(),
    })
}

/// Every segment, as a list in arrival order (sessions: earlier session first).
pub fn collect() -> Arc<dyn Aggregation> {
    Arc::new(Collect)
}

/// Segments grouped by the value of `field`: a map from the key (a string value as is, any other
/// value as its JSON text) to the list of segments in arrival order. A missing field is an error.
pub fn collect_by_key(field: &str) -> Arc<dyn Aggregation> {
    Arc::new(CollectByKey {
        field: field.to_owned(),
    })
}

/// The number in `field` of `segment`, as `Int` when it fits, else `Float`.
fn number(segment: &Map, field: &str) -> Result<Value, AggregationError> {
    match segment.get(field) {
        None => Err(AggregationError::MissingField {
            field: field.to_owned(),
        }),
        Some(Value::Int(i)) => Ok(Value::Int(*i)),
        Some(Value::UInt(u)) => Ok(i64::try_from(*u).map_or(Value::Float(*u as f64), Value::Int)),
        Some(Value::Float(f)) => Ok(Value::Float(*f)),
        Some(other) => Err(AggregationError::NotANumber {
            field: field.to_owned(),
            found: other.type_name(),
        }),
    }
}

/// Adds two numbers: integers stay integers unless the sum overflows; anything else is a float.
/// Non-numbers count as 0.
fn add(a: &Value, b: &Value) -> Value {
    match (a, b) {
        (Value::Int(x), Value::Int(y)) => x
            .checked_add(*y)
            .map_or(Value::Float(*x as f64 + *y as f64), Value::Int),
        _ => Value::Float(a.as_f64().unwrap_or(0.0) + b.as_f64().unwrap_or(0.0)),
    }
}

/// `*a = add(a, b)`, in place where both are integers and the sum fits.
fn add_in_place(a: &mut Value, b: &Value) {
    if let (Value::Int(x), Value::Int(y)) = (&mut *a, b) {
        if let Some(sum) = x.checked_add(*y) {
            *x = sum;
            return;
        }
    }
    *a = add(a, b);
}

/// Compares two numbers exactly when both are integers, else as floats.
fn cmp_numbers(a: &Value, b: &Value) -> Ordering {
    match (a.as_i64(), b.as_i64()) {
        (Some(x), Some(y)) if !matches!(a, Value::Float(_)) && !matches!(b, Value::Float(_)) => {
            x.cmp(&y)
        }
        _ => a
            .as_f64()
            .unwrap_or(f64::NAN)
            .total_cmp(&b.as_f64().unwrap_or(f64::NAN)),
    }
}

struct Count;

impl Aggregation for Count {
    fn update_ignores_state(&self) -> bool {
        true
    }
    fn name(&self) -> &str {
        "count"
    }
    fn init(&self) -> Value {
        Value::Int(0)
    }
    fn create_update(&self, _state: &Value, _segment: &Map) -> Result<Value, AggregationError> {
        Ok(Value::Int(1))
    }
    fn apply_update(&self, state: Value, update: &Value) -> Value {
        add(&state, update)
    }
    fn apply_update_in_place(&self, state: &mut Value, update: &Value) {
        add_in_place(state, update);
    }
    fn merge(&self, a: Value, b: Value) -> Value {
        add(&a, &b)
    }
}

struct Sum {
    field: String,
}

impl Aggregation for Sum {
    fn update_ignores_state(&self) -> bool {
        true
    }
    fn name(&self) -> &str {
        "sum"
    }
    fn init(&self) -> Value {
        Value::Int(0)
    }
    fn create_update(&self, _state: &Value, segment: &Map) -> Result<Value, AggregationError> {
        number(segment, &self.field)
    }
    fn apply_update(&self, state: Value, update: &Value) -> Value {
        add(&state, update)
    }
    fn apply_update_in_place(&self, state: &mut Value, update: &Value) {
        add_in_place(state, update);
    }
    fn merge(&self, a: Value, b: Value) -> Value {
        add(&a, &b)
    }
}

struct Extremum {
    field: String,
    init: Value,
    /// `Less` for min, `Greater` for max: the ordering of a value that replaces the state.
    keep: Ordering,
}

impl Extremum {
    fn pick(&self, state: Value, candidate: &Value) -> Value {
        if state.is_null() || cmp_numbers(candidate, &state) == self.keep {
            candidate.clone()
        } else {
            state
        }
    }
}

impl Aggregation for Extremum {
    fn update_ignores_state(&self) -> bool {
        true
    }
    fn name(&self) -> &str {
        if self.keep == Ordering::Less {
            "min"
        } else {
            "max"
        }
    }
    fn init(&self) -> Value {
        self.init.clone()
    }
    fn create_update(&self, _state: &Value, segment: &Map) -> Result<Value, AggregationError> {
        number(segment, &self.field)
    }
    fn apply_update(&self, state: Value, update: &Value) -> Value {
        self.pick(state, update)
    }
    fn merge(&self, a: Value, b: Value) -> Value {
        if b.is_null() {
            a
        } else {
            self.pick(a, &b)
        }
    }
}

struct Average {
    field: String,
}

impl Average {
    fn parts(state: &Value) -> (i64, Value) {
        let m = state.as_map();
        let n = m
            .and_then(|m| m.get("n"))
            .and_then(Value::as_i64)
            .unwrap_or(0);
        let sum = m
            .and_then(|m| m.get("sum"))
            .cloned()
            .unwrap_or(Value::Int(0));
        (n, sum)
    }

    fn state(n: i64, sum: Value) -> Value {
        let average = if n == 0 {
            Value::Null
        } else {
            Value::Float(sum.as_f64().unwrap_or(0.0) / n as f64)
        };
        let mut m = Map::with_capacity(3);
        m.insert("n", n);
        m.insert("sum", sum);
        m.insert("average", average);
        Value::Map(m)
    }
}

impl Aggregation for Average {
    fn update_ignores_state(&self) -> bool {
        true
    }
    fn name(&self) -> &str {
        "average"
    }
    fn init(&self) -> Value {
        Average::state(0, Value::Int(0))
    }
    fn create_update(&self, _state: &Value, segment: &Map) -> Result<Value, AggregationError> {
        number(segment, &self.field)
    }
    fn apply_update(&self, state: Value, update: &Value) -> Value {
        let (n, sum) = Average::parts(&state);
        Average::state(n + 1, add(&sum, update))
    }
    fn merge(&self, a: Value, b: Value) -> Value {
        let (na, sa) = Average::parts(&a);
        let (nb, sb) = Average::parts(&b);
        Average::state(na + nb, add(&sa, &sb))
    }
}

struct Collect;

impl Aggregation for Collect {
    fn update_ignores_state(&self) -> bool {
        true
    }
    fn name(&self) -> &str {
        "collect"
    }
    fn init(&self) -> Value {
        Value::List(Vec::new())
    }
    fn create_update(&self, _state: &Value, segment: &Map) -> Result<Value, AggregationError> {
        Ok(Value::Map(segment.clone()))
    }
    fn apply_update(&self, state: Value, update: &Value) -> Value {
        let mut list = match state {
            Value::List(l) => l,
            _ => Vec::new(),
        };
        list.push(update.clone());
        Value::List(list)
    }
    fn merge(&self, a: Value, b: Value) -> Value {
        match (a, b) {
            (Value::List(mut a), Value::List(b)) => {
                a.extend(b);
                Value::List(a)
            }
            (a @ Value::List(_), _) => a,
            (_, b) => b,
        }
    }
}

struct CollectByKey {
    field: String,
}

/// The map key for a grouping value: strings as they are, anything else as its JSON text.
fn key_string(v: &Value) -> Text {
    match v {
        Value::Str(s) => s.clone(),
        other => compact_str::format_compact!("{other}"),
    }
}

impl Aggregation for CollectByKey {
    fn update_ignores_state(&self) -> bool {
        true
    }
    fn name(&self) -> &str {
        "collect_by_key"
    }
    fn init(&self) -> Value {
        Value::Map(Map::new())
    }
    fn create_update(&self, _state: &Value, segment: &Map) -> Result<Value, AggregationError> {
        if segment.contains_key(&self.field) {
            Ok(Value::Map(segment.clone()))
        } else {
            Err(AggregationError::MissingField {
                field: self.field.clone(),
            })
        }
    }
    fn apply_update(&self, state: Value, update: &Value) -> Value {
        let mut map = match state {
            Value::Map(m) => m,
            _ => Map::new(),
        };
        let key = key_string(
            update
                .as_map()
                .and_then(|m| m.get(&self.field))
                .unwrap_or(&Value::Null),
        );
        match map.get_mut(&key) {
            Some(Value::List(l)) => l.push(update.clone()),
            _ => {
                map.insert(key, Value::List(vec![update.clone()]));
            }
        }
        Value::Map(map)
    }
    fn merge(&self, a: Value, b: Value) -> Value {
        let (mut a, b) = match (a, b) {
            (Value::Map(a), Value::Map(b)) => (a, b),
            (a @ Value::Map(_), _) => return a,
            (_, b) => return b,
        };
        for (k, v) in b {
            match (a.get_mut(&k), v) {
                (Some(Value::List(l)), Value::List(more)) => l.extend(more),
                (_, v) => {
                    a.insert(k, v);
                }
            }
        }
        Value::Map(a)
    }
}
