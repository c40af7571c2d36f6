//! Groups: the per-window group table (each group's extents and segment-trigger counters,
//! indexed by dense group id) and its lookups, the operator's group ids (key → id, the id a new
//! group gets) and the order in which groups fire. The ids live in the operator's
//! [`Snapshot`](super::Snapshot) and change only by transitions (`Group` interns, the last
//! `Evict` of a group frees). Reads only: nothing here calls the rest of the operator.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Extent, WindowOperator};
use crate::extent_map::ExtentMap;
use crate::value::Value;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct GroupState {
    pub(super) extents: ExtentMap<Extent>,
    pub(super) counters: Vec<u64>,
}

/// The groups of one window, indexed by group id. Ids are dense (freed ids are reused), so a
/// vector finds a group without the cache misses of a search tree. Serialized as a map from
/// id to state; equal when the same ids hold equal states.
#[derive(Debug, Clone, Default)]
pub(super) struct GroupTable {
    slots: Vec<Option<GroupState>>,
}

impl GroupTable {
    pub(super) fn get(&self, g: &u32) -> Option<&GroupState> {
        self.slots.get(*g as usize).and_then(Option::as_ref)
    }

    pub(super) fn get_mut(&mut self, g: &u32) -> Option<&mut GroupState> {
        self.slots.get_mut(*g as usize).and_then(Option::as_mut)
    }

    pub(super) fn get_or_insert_with(
        &mut self,
        g: u32,
        f: impl FnOnce() -> GroupState,
    ) -> &mut GroupState {
        let i = g as usize;
        if self.slots.len() <= i {
            self.slots.resize_with(i + 1, || None);
        }
        self.slots[i].get_or_insert_with(f)
    }

    pub(super) fn insert(&mut self, g: u32, gs: GroupState) {
        *self.get_or_insert_with(g, || GroupState {
            extents: ExtentMap::new(),
            counters: Vec::new(),
        }) = gs;
    }

    pub(super) fn remove(&mut self, g: &u32) -> Option<GroupState> {
        let gs = self.slots.get_mut(*g as usize)?.take();
        while matches!(self.slots.last(), Some(None)) {
            self.slots.pop();
        }
        gs
    }

    /// `(id, state)`, ascending by id.
    pub(super) fn iter(&self) -> impl Iterator<Item = (u32, &GroupState)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(g, gs)| Some((g as u32, gs.as_ref()?)))
    }

    pub(super) fn keys(&self) -> impl Iterator<Item = u32> + '_ {
        self.iter().map(|(g, _)| g)
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &GroupState> {
        self.iter().map(|(_, gs)| gs)
    }
}

impl PartialEq for GroupTable {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Serialize for GroupTable {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        // bincode needs the length up front.
        let mut m = s.serialize_map(Some(self.iter().count()))?;
        for (g, gs) in self.iter() {
            m.serialize_entry(&g, gs)?;
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for GroupTable {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let map = BTreeMap::<u32, GroupState>::deserialize(d)?;
        let mut t = GroupTable::default();
        for (g, gs) in map {
            t.insert(g, gs);
        }
        Ok(t)
    }
}

/// Group `g`'s state in a window with `n` triggers, created empty if it has none.
pub(super) fn group_entry(groups: &mut GroupTable, g: u32, n: usize) -> &mut GroupState {
    groups.get_or_insert_with(g, || GroupState {
        extents: ExtentMap::new(),
        counters: vec![0; n],
    })
}

impl WindowOperator {
    /// The id of group `key`, if it is interned.
    pub(super) fn group_id(&self, key: &Value) -> Option<u32> {
        self.group_ids.get(key).copied()
    }

    /// The id a new group is interned under: the lowest free id, or the next new one.
    pub(super) fn next_group_id(&self) -> u32 {
        self.free_groups
            .first()
            .copied()
            .unwrap_or(self.state.groups.len() as u32)
    }

    /// Extent `e` of group `g` in window `w`, if it is live.
    pub(super) fn extent(&self, w: usize, g: u32, e: i64) -> Option<&Extent> {
        self.state.windows[w].groups.get(&g)?.extents.get(&e)
    }

    /// The live extent ids of group `g` in window `w`, ascending.
    pub(super) fn extent_keys(&self, w: usize, g: u32) -> Vec<i64> {
        self.state.windows[w]
            .groups
            .get(&g)
            .map_or_else(Vec::new, |gs| gs.extents.keys().copied().collect())
    }

    /// Group ids of window `w`, ordered by group value.
    pub(super) fn sorted_groups(&self, w: usize) -> Vec<u32> {
        let mut gs: Vec<u32> = self.state.windows[w].groups.keys().collect();
        gs.sort_by(|a, b| self.state.groups[*a as usize].cmp(&self.state.groups[*b as usize]));
        gs
    }
}
