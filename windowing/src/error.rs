//! Errors of the window logic: bad specs, bad segments, bad transitions or snapshots.

use thiserror::Error;

/// Why an aggregation could not turn a segment into an update.
///
/// The message is meant for the job's error output, so it names the field exactly, e.g.
/// `field "age" is missing` or `field "age" is a string, expected a number`.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AggregationError {
    /// The segment has no such field.
    #[error("field {field:?} is missing")]
    MissingField {
        /// The field name.
        field: String,
    },
    /// The field holds a value that is not a number.
    #[error("field {field:?} is {}, expected a number", a_type(found))]
    NotANumber {
        /// The field name.
        field: String,
        /// The type name of what was found (see [`crate::Value::type_name`]).
        found: &'static str,
    },
    /// Any other reason, from a user aggregation.
    #[error("{0}")]
    Other(String),
}

/// A type name with its article, for messages: `null`, `an integer`, `a string`.
pub(crate) fn a_type(type_name: &str) -> String {
    match type_name {
        "null" => "null".to_owned(),
        t if t.starts_with(['a', 'e', 'i', 'o', 'u']) => format!("an {t}"),
        t => format!("a {t}"),
    }
}

/// Errors of the window operator.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum WindowError {
    /// A window spec is invalid (bad job data).
    #[error("window {window:?}: {message}")]
    InvalidWindow {
        /// The window id.
        window: String,
        /// What is wrong.
        message: String,
    },
    /// A trigger spec is invalid (bad job data).
    #[error("trigger {trigger:?} of window {window:?}: {message}")]
    InvalidTrigger {
        /// The window id the trigger names.
        window: String,
        /// The trigger id.
        trigger: String,
        /// What is wrong.
        message: String,
    },
    /// The segment's window key is missing or not a time/integer (the segment is rejected).
    #[error("window {window:?}: {message}")]
    WindowKey {
        /// The window id.
        window: String,
        /// What is wrong, e.g. `field "event_time" is missing`.
        message: String,
    },
    /// The window's aggregation rejected the segment (the segment is rejected).
    #[error("window {window:?}: {source}")]
    Aggregation {
        /// The window id.
        window: String,
        /// The aggregation's reason.
        source: AggregationError,
    },
    /// A transition does not fit the operator's state (a corrupt or foreign log).
    #[error("transition does not apply: {0}")]
    BadTransition(String),
    /// A snapshot does not fit the operator's windows and triggers.
    #[error("snapshot does not fit these windows and triggers: {0}")]
    BadSnapshot(String),
}
