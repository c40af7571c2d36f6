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
        // The same in `i64` when nothing overflows (every realistic value): two hardware
        // divisions instead of two calls of the 128-bit division routine, once per segment.
        let narrow = v.checked_sub(self.min_value).and_then(|x| {
            let first = x.checked_div_euclid(self.slide)?;
            let last = x
                .checked_add(self.range)?
                .checked_div_euclid(self.slide)?
                .checked_sub(1)?;
            Some(first..=last)
        });
        narrow.or_else(|| self.ids_wide(v))
    }

    /// [`Extents::ids`] in `i128`, for any `v ≥ m`.
    fn ids_wide(&self, v: i64) -> Option<RangeInclusive<i64>> {
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

#[cfg(test)]
mod tests {
    use super::Extents;
    use proptest::prelude::*;

    /// Values near the ends of `i64` as often as ordinary ones.
    fn any_edge() -> impl Strategy<Value = i64> {
        prop_oneof![
            any::<i64>(),
            (i64::MAX - 1_000..=i64::MAX),
            (i64::MIN..=i64::MIN + 1_000),
            (-1_000_i64..1_000),
        ]
    }

    proptest! {
        /// The `i64` fast path of `ids` gives exactly what the `i128` arithmetic gives.
        #[test]
        fn ids_agree_with_the_wide_arithmetic(
            min_value in any_edge(),
            range in prop_oneof![1_i64..100, 1_i64..=i64::MAX, Just(i64::MAX)],
            slide in prop_oneof![1_i64..100, 1_i64..=i64::MAX, Just(i64::MAX)],
            v in any_edge(),
        ) {
            let x = Extents::sliding(min_value, range, slide);
            let want = if v < min_value { None } else { x.ids_wide(v) };
            prop_assert_eq!(x.ids(v), want);
        }
    }
}
