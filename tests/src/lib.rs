//! End-to-end tests of Sardonyx.
