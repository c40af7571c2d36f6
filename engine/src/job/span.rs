//! Durations and sizes written as `[n, "unit"]`.

use std::fmt;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::ser::{SerializeTuple, Serializer};
use serde::{Deserialize, Serialize};

/// The unit of a [`Span`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Unit {
    /// Milliseconds.
    Milliseconds,
    /// Seconds.
    Seconds,
    /// Minutes.
    Minutes,
    /// Hours.
    Hours,
    /// Days.
    Days,
    /// A count of elements (segments, or raw integer window-key values).
    Elements,
}

impl Unit {
    /// The unit's canonical (plural) name.
    pub fn name(self) -> &'static str {
        match self {
            Unit::Milliseconds => "milliseconds",
            Unit::Seconds => "seconds",
            Unit::Minutes => "minutes",
            Unit::Hours => "hours",
            Unit::Days => "days",
            Unit::Elements => "elements",
        }
    }

    /// Parses a unit name, singular or plural.
    pub fn parse(s: &str) -> Option<Unit> {
        Some(match s {
            "millisecond" | "milliseconds" => Unit::Milliseconds,
            "second" | "seconds" => Unit::Seconds,
            "minute" | "minutes" => Unit::Minutes,
            "hour" | "hours" => Unit::Hours,
            "day" | "days" => Unit::Days,
            "element" | "elements" => Unit::Elements,
            _ => return None,
        })
    }

    /// Milliseconds per unit, or `None` for elements.
    pub fn millis(self) -> Option<i64> {
        match self {
            Unit::Milliseconds => Some(1),
            Unit::Seconds => Some(1_000),
            Unit::Minutes => Some(60_000),
            Unit::Hours => Some(3_600_000),
            Unit::Days => Some(86_400_000),
            Unit::Elements => None,
        }
    }
}

/// An amount with a unit: `[5, "minutes"]`, `[100, "elements"]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Span {
    /// The amount.
    pub n: i64,
    /// The unit.
    pub unit: Unit,
}

impl Span {
    /// A span of `n` units.
    pub fn new(n: i64, unit: Unit) -> Self {
        Span { n, unit }
    }
    /// `n` milliseconds.
    pub fn millis(n: i64) -> Self {
        Span::new(n, Unit::Milliseconds)
    }
    /// `n` seconds.
    pub fn seconds(n: i64) -> Self {
        Span::new(n, Unit::Seconds)
    }
    /// `n` minutes.
    pub fn minutes(n: i64) -> Self {
        Span::new(n, Unit::Minutes)
    }
    /// `n` hours.
    pub fn hours(n: i64) -> Self {
        Span::new(n, Unit::Hours)
    }
    /// `n` days.
    pub fn days(n: i64) -> Self {
        Span::new(n, Unit::Days)
    }
    /// `n` elements.
    pub fn elements(n: i64) -> Self {
        Span::new(n, Unit::Elements)
    }

    /// True for a time span (not elements).
    pub fn is_time(&self) -> bool {
        self.unit != Unit::Elements
    }

    /// The span in milliseconds, or `None` for elements.
    pub fn as_millis(&self) -> Option<i64> {
        self.unit.millis().map(|m| self.n.saturating_mul(m))
    }

    /// The span in its base unit: milliseconds for time, the count for elements.
    pub fn base_amount(&self) -> i64 {
        self.as_millis().unwrap_or(self.n)
    }

    /// The span as a std duration (elements count as milliseconds; negative as zero).
    pub fn as_duration(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.base_amount().max(0) as u64)
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}, \"{}\"]", self.n, self.unit.name())
    }
}

impl Serialize for Span {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut t = serializer.serialize_tuple(2)?;
        t.serialize_element(&self.n)?;
        t.serialize_element(self.unit.name())?;
        t.end()
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SpanVisitor;
        impl<'de> Visitor<'de> for SpanVisitor {
            type Value = Span;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("[n, \"unit\"] such as [5, \"minutes\"]")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Span, A::Error> {
                let n: i64 = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(0, &self))?;
                let unit: String = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(1, &self))?;
                if seq.next_element::<de::IgnoredAny>()?.is_some() {
                    return Err(de::Error::invalid_length(3, &self));
                }
                let unit = Unit::parse(&unit).ok_or_else(|| {
                    de::Error::custom(format!(
                        "unknown unit \"{unit}\", expected one of milliseconds, seconds, minutes, hours, days, elements"
                    ))
                })?;
                if n < 0 {
                    return Err(de::Error::custom(format!("negative amount {n}")));
                }
                Ok(Span { n, unit })
            }
        }
        deserializer.deserialize_seq(SpanVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_singular_and_plural() {
        let s: Span = serde_json::from_str(r#"[5, "minute"]"#).unwrap();
        assert_eq!(s, Span::minutes(5));
        assert_eq!(s.as_millis(), Some(300_000));
        assert_eq!(serde_json::to_string(&s).unwrap(), r#"[5,"minutes"]"#);
        let e = serde_json::from_str::<Span>(r#"[5, "minuts"]"#).unwrap_err();
        assert!(e.to_string().starts_with(
            "unknown unit \"minuts\", expected one of milliseconds, seconds, minutes, hours, days, elements"
        ));
    }
}
