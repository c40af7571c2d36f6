//! Typed builders for jobs (filled in below).
