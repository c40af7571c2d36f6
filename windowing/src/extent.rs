//! Extent ids and bounds of fixed and sliding windows (DESIGN §4, Onyx's algorithm).
//!
//! With m = `min_value`, r = range and s = slide (s = r for fixed windows), a value v ≥ m
//! belongs to every extent w from ⌊(v−m)/s⌋ to ⌊(v−m+r)/s⌋ − 1, and extent w spans the
//! **inclusive** bounds lower(w) = max(m, m + s·(w+1) − r), upper(w) = m + s·(w+1) − 1.
//! Values below m belong to no extent (they are late by definition).
//!
//! Arithmetic is done in `i128` and saturated to `i64`, so extreme values cannot overflow.

use std::ops::RangeInclusive;

/// The geometry of a fixed or sliding window: min value, range and slide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extents {
    /// m: the least value that belongs to an extent.
    pub min_value: i64,
    /// r: the width of an extent (before clipping at m).
    pub range: i64,
    /// s: the distance between the starts of consecutive extents (= range for fixed windows).
    pub slide: i64,
}

fn sat(x: i128) -> i64 {
    x.clamp(i64::MIN as i128, i64::MAX as i128) as i64
}

impl Extents {
    /// A fixed window: slide = range.
    pub fn fixed(min_value: i64, range: i64) -> Self {
        Extents {
            min_value,
            range,
            slide: range,
        }
    }

    /// A sliding window.
    pub fn sliding(min_value: i64, range: i64, slide: i64) -> Self {
        Extents {
            min_value,
            range,
            slide,
        }
    }

    /// The ids of the extents holding `v`, ascending; `None` when v < m. May be empty when the
    /// slide exceeds the range and v falls in a gap.
    pub fn ids(&self, v: i64) -> Option<RangeInclusive<i64>> {
        if v < self.min_value {
            return None;
        }
        let x = v as i128 - self.min_value as i128;
        let s = self.slide as i128;
        let first = x.div_euclid(s);
        let last = (x + self.range as i128).div_euclid(s) - 1;
        Some(sat(first)..=sat(last))
    }

    /// The inclusive lower bound of extent `w` (clipped at m).
    pub fn lower(&self, w: i64) -> i64 {
        let raw =
            self.min_value as i128 + self.slide as i128 * (w as i128 + 1) - self.range as i128;
        sat(raw.max(self.min_value as i128))
    }

    /// The inclusive upper bound of extent `w`.
    pub fn upper(&self, w: i64) -> i64 {
        sat(self.min_value as i128 + self.slide as i128 * (w as i128 + 1) - 1)
    }

    /// The greatest upper bound over the extents of `v` (`None` when v < m or v has none).
    pub fn last_upper(&self, v: i64) -> Option<i64> {
        let ids = self.ids(v)?;
        if ids.is_empty() {
            None
        } else {
            Some(self.upper(*ids.end()))
        }
    }
}
