//! Segments' field lists carried back from where a batch ends to where segments are made, so
//! that a segment costs no allocation on the per-event path.
//!
//! A segment is made on an input's thread (its parser allocates the field list) and dropped on
//! another (the output's, after its sink wrote it). With glibc's allocator, every such free
//! goes back to the arena of the thread that allocated it, under that arena's lock, which the
//! input's thread holds to allocate the next one: the two threads contend on it for every
//! event. At 2M votes in memory mode, malloc, free and the waits and wake-ups of that lock were
//! about 22 % of the cycles (`perf record`, BENCHMARKS.md "Session 22"). Instead, an output
//! gives the field lists of the segments it wrote back ([`SparePool::give_back`], once per
//! batch, one lock of the process-wide [`POOL`]), and an input's
//! [`crate::segment::LineParser`] takes a chunk of them ([`SparePool::take`], once per batch)
//! and parses into them.
//!
//! The pool is bounded ([`MAX_SPARES`] lists of at most [`MAX_FIELDS`] fields): past it, field
//! lists are freed as before. A job whose inputs take none (segments handed over in memory
//! through `sardonyx/channel`) leaves at most that many in the pool.

use std::sync::Mutex;

use sardonyx_windowing::value::SpareFields;

use crate::segment::Segment;

/// Field lists the pool holds at most (about eight batches of the default size): enough for
/// the segments in flight between an input and an output, few enough that a job whose inputs
/// never take them holds little (about 2 MB for lists of four fields).
pub const MAX_SPARES: usize = 8192;

/// Field lists with room for more fields than this are not kept (a segment that large has a
/// field index, and a parser of few fields would hold its memory for nothing).
pub const MAX_FIELDS: usize = 16;

/// A pool of spare field lists, in chunks as they were given back.
pub struct SparePool {
    inner: Mutex<Chunks>,
}

struct Chunks {
    chunks: Vec<Vec<SpareFields>>,
    /// Field lists in `chunks`.
    spares: usize,
}

/// The process-wide pool that outputs give back to and input parsers take from.
pub static POOL: SparePool = SparePool::new();

impl Default for SparePool {
    fn default() -> Self {
        SparePool::new()
    }
}

impl SparePool {
    /// An empty pool.
    pub const fn new() -> Self {
        SparePool {
            inner: Mutex::new(Chunks {
                chunks: Vec::new(),
                spares: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Chunks> {
        // The pool holds no invariant a panic could break halfway.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the field lists of `segments` (written, and no longer needed) into the pool, as
    /// one chunk, if it has room for them all; otherwise they are freed.
    pub fn give_back(&self, segments: impl IntoIterator<Item = Segment>) {
        let chunk: Vec<SpareFields> = segments
            .into_iter()
            .filter_map(Segment::into_spare)
            .filter(|s| s.capacity() <= MAX_FIELDS)
            .collect();
        if chunk.is_empty() {
            return;
        }
        let rejected = {
            let mut pool = self.lock();
            if pool.spares + chunk.len() <= MAX_SPARES {
                pool.spares += chunk.len();
                pool.chunks.push(chunk);
                None
            } else {
                Some(chunk)
            }
        };
        // Freed outside the lock.
        drop(rejected);
    }

    /// A chunk of spare field lists (the one given back last), or an empty vector if the pool
    /// has none.
    pub fn take(&self) -> Vec<SpareFields> {
        let mut pool = self.lock();
        match pool.chunks.pop() {
            Some(chunk) => {
                pool.spares -= chunk.len();
                chunk
            }
            None => Vec::new(),
        }
    }

    /// Field lists in the pool.
    pub fn len(&self) -> usize {
        self.lock().spares
    }

    /// True if the pool holds no field list.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sardonyx_windowing::Value;

    fn segment(fields: usize) -> Segment {
        let mut s = Segment::with_capacity(fields);
        for i in 0..fields {
            s.insert(format!("f{i}"), Value::Int(i as i64));
        }
        s
    }

    #[test]
    fn what_is_given_back_is_taken_as_empty_lists_with_their_room() {
        let pool = SparePool::new();
        pool.give_back([segment(3), segment(4), Segment::new()]);
        // The map that never had room gives nothing back.
        assert_eq!(pool.len(), 2);
        let chunk = pool.take();
        assert_eq!(pool.len(), 0);
        let room: Vec<usize> = chunk.iter().map(SpareFields::capacity).collect();
        assert!(room[0] >= 3 && room[1] >= 4, "{room:?}");
        let mut m = Segment::from_spare(chunk.into_iter().next().unwrap());
        assert!(m.is_empty());
        m.insert("a", 1);
        assert_eq!(m.get("a"), Some(&Value::Int(1)));
        assert!(pool.take().is_empty());
    }

    #[test]
    fn the_pool_keeps_at_most_its_bound_and_no_large_lists() {
        let pool = SparePool::new();
        pool.give_back([segment(MAX_FIELDS + 1)]);
        assert!(pool.is_empty());
        pool.give_back((0..MAX_SPARES - 1).map(|_| segment(1)));
        // A chunk that does not fit whole is freed.
        pool.give_back([segment(1), segment(1)]);
        assert_eq!(pool.len(), MAX_SPARES - 1);
        pool.give_back([segment(1)]);
        assert_eq!(pool.len(), MAX_SPARES);
        assert_eq!(pool.take().len(), 1);
        assert_eq!(pool.take().len(), MAX_SPARES - 1);
    }
}
