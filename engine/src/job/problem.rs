//! The problems found in a job, by loading or by validation: each with where it is, the field
//! and what is wrong, rendered one a line so a user fixes every one in one pass.

use std::fmt;

/// One problem in a job: where it is (a task, window, trigger …), the field, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The entry at fault: `task "count"`, `window "per-minute"`, `workflow`, `job` …
    pub location: String,
    /// The field at fault, if one field is.
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl Problem {
    /// A problem at `location`, optionally in `field`.
    pub fn new(
        location: impl Into<String>,
        field: Option<&str>,
        message: impl Into<String>,
    ) -> Self {
        Problem {
            location: location.into(),
            field: field.map(str::to_owned),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{}, field {}: {}", self.location, field, self.message),
            None => write!(f, "{}: {}", self.location, self.message),
        }
    }
}

pub(crate) fn render(problems: &[Problem]) -> String {
    let mut s = format!(
        "{} problem{} in the job:",
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    );
    for p in problems {
        s.push_str("\n  - ");
        s.push_str(&p.to_string());
    }
    s
}

/// A job that failed validation, with every problem found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", render(.problems))]
pub struct ValidationError {
    /// The problems, in the order the job's sections are checked.
    pub problems: Vec<Problem>,
}

impl ValidationError {
    /// The problems, each rendered as one line.
    pub fn messages(&self) -> Vec<String> {
        self.problems.iter().map(Problem::to_string).collect()
    }
}
