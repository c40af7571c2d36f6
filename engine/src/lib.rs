//! Sardonyx.
