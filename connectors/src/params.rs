//! Reading and checking a plugin's free-form `params` JSON object.
//!
//! Every connector has a typed params struct (deserialized with serde) and a `validate` function
//! that reports every problem at once as `(field, message)` pairs, so that a job's validation can
//! name the task and field of each.

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::ConnectorError;

/// Problems found in a plugin's params: `(field, message)` pairs, empty when all is well.
pub type Problems = Vec<(String, String)>;

/// Deserializes `params` into a connector's params struct. Callers validate first; this is the
/// last line of defence and reports a fatal error with all the problems `validate` finds.
pub(crate) fn parse<T: DeserializeOwned>(
    plugin: &str,
    params: &Value,
    validate: fn(&Value) -> Problems,
) -> Result<T, ConnectorError> {
    let problems = validate(params);
    if !problems.is_empty() {
        return Err(ConnectorError::fatal(
            format!("{plugin} params"),
            describe(&problems),
        ));
    }
    serde_json::from_value(params.clone())
        .map_err(|e| ConnectorError::fatal(format!("{plugin} params"), e.to_string()))
}

/// Joins problems into one message: `field: message; field: message`.
pub fn describe(problems: &[(String, String)]) -> String {
    problems
        .iter()
        .map(|(field, message)| format!("{field}: {message}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// A checker over the fields of a params object that collects problems and unknown fields.
pub(crate) struct Fields<'a> {
    obj: &'a Map<String, Value>,
    known: Vec<&'static str>,
    problems: Problems,
}

impl<'a> Fields<'a> {
    /// Starts checking `params`, which must be a JSON object.
    pub(crate) fn new(params: &'a Value) -> Result<Self, Problems> {
        match params {
            Value::Object(obj) => Ok(Fields {
                obj,
                known: Vec::new(),
                problems: Vec::new(),
            }),
            other => Err(vec![(
                "params".to_string(),
                format!("must be a JSON object, got {}", kind(other)),
            )]),
        }
    }

    /// Records a problem with `field`.
    pub(crate) fn problem(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.problems.push((field.into(), message.into()));
    }

    /// The raw value of `field`, if present and not null.
    pub(crate) fn value(&mut self, field: &'static str, required: bool) -> Option<&'a Value> {
        self.known.push(field);
        match self.obj.get(field) {
            None | Some(Value::Null) => {
                if required {
                    self.problem(field, "is required");
                }
                None
            }
            Some(v) => Some(v),
        }
    }

    /// A non-empty string field.
    pub(crate) fn string(&mut self, field: &'static str, required: bool) -> Option<&'a str> {
        match self.value(field, required)? {
            Value::String(s) if s.trim().is_empty() => {
                self.problem(field, "must not be empty");
                None
            }
            Value::String(s) => Some(s),
            other => {
                self.problem(field, format!("must be a string, got {}", kind(other)));
                None
            }
        }
    }

    /// A non-negative integer field.
    pub(crate) fn unsigned(&mut self, field: &'static str, required: bool) -> Option<u64> {
        match self.value(field, required)? {
            Value::Number(n) if n.as_u64().is_some() => n.as_u64(),
            other => {
                self.problem(
                    field,
                    format!("must be a non-negative integer, got {}", kind(other)),
                );
                None
            }
        }
    }

    /// A boolean field.
    pub(crate) fn boolean(&mut self, field: &'static str) -> Option<bool> {
        match self.value(field, false)? {
            Value::Bool(b) => Some(*b),
            other => {
                self.problem(field, format!("must be true or false, got {}", kind(other)));
                None
            }
        }
    }

    /// An object whose values are all strings (such as extra client properties).
    pub(crate) fn string_map(&mut self, field: &'static str) -> Vec<(&'a str, &'a str)> {
        let mut out = Vec::new();
        match self.value(field, false) {
            None => {}
            Some(Value::Object(map)) => {
                for (k, v) in map {
                    match v {
                        Value::String(s) => out.push((k.as_str(), s.as_str())),
                        other => self.problem(
                            format!("{field}.{k}"),
                            format!("must be a string, got {}", kind(other)),
                        ),
                    }
                }
            }
            Some(other) => self.problem(
                field,
                format!("must be an object of strings, got {}", kind(other)),
            ),
        }
        out
    }

    /// Ends the check without reporting unknown fields (for params other code also reads).
    pub(crate) fn into_problems(self) -> Problems {
        self.problems
    }

    /// Ends the check: every field not asked about is reported as unknown.
    pub(crate) fn finish(mut self) -> Problems {
        let mut unknown: Vec<&String> = self
            .obj
            .keys()
            .filter(|k| !self.known.contains(&k.as_str()))
            .collect();
        unknown.sort();
        let expected = self.known.join(", ");
        for k in unknown {
            self.problems.push((
                k.clone(),
                format!("unknown field; expected one of: {expected}"),
            ));
        }
        self.problems
    }
}

/// A short name for the kind of a JSON value, for messages.
pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "an integer",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reports_every_problem_and_unknown_fields() {
        let params = json!({"a": 3, "b": "", "c": -1, "zz": 1, "m": {"x": 1}});
        let mut f = Fields::new(&params).unwrap();
        assert_eq!(f.string("a", true), None);
        assert_eq!(f.string("b", true), None);
        assert_eq!(f.unsigned("c", false), None);
        assert_eq!(f.string("d", true), None);
        assert!(f.string_map("m").is_empty());
        let problems = f.finish();
        let fields: Vec<&str> = problems.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(fields, ["a", "b", "c", "d", "m.x", "zz"]);
        assert_eq!(problems[0].1, "must be a string, got an integer");
        assert_eq!(problems[3].1, "is required");
        assert!(Fields::new(&json!([1])).is_err());
    }
}
