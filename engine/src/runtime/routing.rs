//! Pure routing logic: which downstream tasks a segment goes to (flow conditions) and which peer
//! of a task takes a key (key groups).
//!
//! **Key placement is specified** (DESIGN §4, "Grouping"): a group key hashes to
//! `xxh3_64(canonical bytes of the key, seed 0)` ([`key_hash`], with the canonical bytes of
//! [`Value::write_canonical`]); the hash falls in key group `⌊hash · G / 2⁶⁴⌋` of the job's
//! `key_groups` G ([`crate::key_groups::key_group_of`]); and the slot of `n_peers` that owns the key
//! group in the contiguous division ([`crate::key_groups::slot_of`]) takes the key. A slot's persisted
//! window state and dedup ids are those of the keys placed on it, so this must give the same
//! answer in every build and every Rust release; `tests::key_placement_is_pinned` fails if it
//! changes. A job's meta record says which placement wrote its state ([`placement`], which
//! names the number of key groups), and a resume written with another is refused.

use std::borrow::Cow;

use crate::division::Division;
use crate::job::{FlowCondition, FlowTo, GroupKey, PredicateExpr};
use crate::registry::Registry;
use crate::segment::{Segment, Value};

/// The name of the key placement this build uses: the hash, the canonical bytes, the reduction
/// to key groups and their contiguous division among slots. With the number of key groups
/// ([`placement`]) it is recorded with a job's state, so that a resume under another placement
/// is refused (its keys would be on other slots).
pub const ROUTING: &str = "xxh3-64/seed-0/canonical-v1/key-groups/contiguous";

/// The placement recorded with a job's state: [`ROUTING`] and the job's number of key groups
/// (a different number puts some keys on other slots, so it is a different placement).
pub fn placement(key_groups: usize) -> String {
    format!("{ROUTING}/{key_groups}")
}

/// The slot (of `n_peers`) that takes a key of hash `hash`: the owner of its key group (of
/// `key_groups`) in the contiguous division ([`Division::slot_of_hash`], which routing calls
/// with the task's own division).
pub fn hash_peer(hash: u64, n_peers: usize, key_groups: usize) -> usize {
    Division::contiguous(n_peers, key_groups).slot_of_hash(hash)
}

pub use crate::key_groups::key_hash;

/// The group key of a segment for `group_by_key`: the field's value, or the list of the fields'
/// values for a compound key. A missing field is an error naming it.
pub fn group_key(key: &GroupKey, segment: &Segment) -> Result<Value, String> {
    let get = |f: &str| {
        segment
            .get(f)
            .cloned()
            .ok_or_else(|| missing_group_field(f))
    };
    match key {
        GroupKey::One(f) => get(f),
        GroupKey::Many(fs) => fs
            .iter()
            .map(|f| get(f))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::List),
    }
}

/// The group key of a segment like [`group_key`], borrowed from the segment for a one-field key
/// (no copy of the field's value); compound keys are built.
pub fn group_key_ref<'s>(key: &GroupKey, segment: &'s Segment) -> Result<Cow<'s, Value>, String> {
    match key {
        GroupKey::One(f) => segment
            .get(f)
            .map(Cow::Borrowed)
            .ok_or_else(|| missing_group_field(f)),
        GroupKey::Many(_) => group_key(key, segment).map(Cow::Owned),
    }
}

fn missing_group_field(f: &str) -> String {
    format!("group_by_key field \"{f}\" is missing")
}

/// The peer (of `n_peers`) that takes a segment's group key among `key_groups` key groups in
/// the contiguous division: [`key_slot`] of [`Division::contiguous`].
pub fn key_peer(
    key: &GroupKey,
    segment: &Segment,
    n_peers: usize,
    key_groups: usize,
) -> Result<usize, String> {
    key_slot(key, segment, &Division::contiguous(n_peers, key_groups))
}

/// The slot of `division` that takes a segment's group key: the owner of the key group of
/// `key_hash(&group_key(key, segment)?)`, without copying the key, and without hashing when
/// there is one slot (a missing field is still an error).
pub fn key_slot(key: &GroupKey, segment: &Segment, division: &Division) -> Result<usize, String> {
    let one = division.slots() <= 1;
    match key {
        GroupKey::One(f) => {
            let v = segment.get(f).ok_or_else(|| missing_group_field(f))?;
            Ok(if one {
                0
            } else {
                division.slot_of_hash(key_hash(v))
            })
        }
        GroupKey::Many(fs) if one => match fs.iter().find(|f| segment.get(f).is_none()) {
            Some(f) => Err(missing_group_field(f)),
            None => Ok(0),
        },
        GroupKey::Many(_) => group_key(key, segment).map(|k| division.slot_of_hash(key_hash(&k))),
    }
}

/// Evaluates a predicate expression against a segment.
pub fn eval_predicate(expr: &PredicateExpr, registry: &Registry, segment: &Segment) -> bool {
    match expr {
        PredicateExpr::Named { name, params } => {
            registry.predicate(name).is_some_and(|p| p(segment, params))
        }
        PredicateExpr::And(ps) => ps.iter().all(|p| eval_predicate(p, registry, segment)),
        PredicateExpr::Or(ps) => ps.iter().any(|p| eval_predicate(p, registry, segment)),
        PredicateExpr::Not(p) => !eval_predicate(p, registry, segment),
    }
}

/// Where one segment goes: indices into the task's downstream list, each with the keys to
/// remove before sending.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Route {
    /// `(downstream index, fields to exclude)` per destination.
    pub destinations: Vec<(usize, Vec<String>)>,
    /// False when the task has flow conditions and none of them matched the segment (a
    /// matching condition whose `to` is `"none"` is a match: the route is empty by choice).
    pub matched: bool,
}

/// The flow conditions that apply to one task, with its downstream task names.
#[derive(Debug, Clone)]
pub struct FlowPlan {
    downstream: Vec<String>,
    conditions: Vec<FlowCondition>,
}

impl FlowPlan {
    /// The plan for task `task` with downstream tasks `downstream`, from all the job's conditions.
    pub fn new(task: &str, downstream: Vec<String>, all: &[FlowCondition]) -> Self {
        // A condition `from: "all"` applies to the tasks that have one of its targets downstream
        // (or any task, for `to: "all"`/`"none"`); elsewhere it could route nowhere.
        let reaches = |c: &FlowCondition| match &c.to {
            FlowTo::Tasks(ts) => ts.iter().any(|t| downstream.contains(t)),
            FlowTo::All | FlowTo::None => true,
        };
        let conditions = all
            .iter()
            .filter(|c| c.from == task || (c.from == "all" && reaches(c)))
            .cloned()
            .collect();
        FlowPlan {
            downstream,
            conditions,
        }
    }

    /// True when no condition applies to the segments the task produces: each then goes to
    /// every downstream task, whole (what [`FlowPlan::route`] gives for `thrown` = false).
    pub fn unconditional(&self) -> bool {
        self.conditions
            .iter()
            .all(|c| c.thrown_exception == Some(true))
    }

    /// The number of downstream tasks.
    pub fn downstream_len(&self) -> usize {
        self.downstream.len()
    }

    /// True if any condition routes failed segments.
    pub fn routes_exceptions(&self) -> bool {
        self.conditions
            .iter()
            .any(|c| c.thrown_exception == Some(true))
    }

    /// The route of a segment the task produced (`thrown` = false) or of an error record for a
    /// segment its function failed on (`thrown` = true; `None` if no condition takes it).
    ///
    /// Without conditions a segment goes to every downstream task.
    /// (Conditions `from: "all"` count only for tasks that have one of their targets downstream.) Otherwise conditions are
    /// evaluated in order: the first matching short-circuit condition decides alone; else the
    /// destinations of every matching condition are joined. A segment no condition matches goes
    /// nowhere, as in Onyx, with [`Route::matched`] false (the runtime counts it). Exception conditions only see failed segments, and the others only
    /// successful ones.
    pub fn route(&self, registry: &Registry, segment: &Segment, thrown: bool) -> Option<Route> {
        let relevant = self
            .conditions
            .iter()
            .filter(|c| (c.thrown_exception == Some(true)) == thrown);
        let mut route = Route::default();
        let mut any_condition = false;
        for c in relevant {
            any_condition = true;
            if !eval_predicate(&c.predicate, registry, segment) {
                continue;
            }
            route.matched = true;
            let targets = self.targets(&c.to);
            if c.short_circuit == Some(true) {
                return Some(Route {
                    destinations: targets
                        .into_iter()
                        .map(|t| (t, c.exclude_keys.clone()))
                        .collect(),
                    matched: true,
                });
            }
            for t in targets {
                match route.destinations.iter_mut().find(|(d, _)| *d == t) {
                    Some((_, keys)) => keys.extend(c.exclude_keys.iter().cloned()),
                    None => route.destinations.push((t, c.exclude_keys.clone())),
                }
            }
        }
        if thrown {
            return (!route.destinations.is_empty()).then_some(route);
        }
        if !any_condition {
            route.matched = true;
            route.destinations = (0..self.downstream.len())
                .map(|i| (i, Vec::new()))
                .collect();
        }
        Some(route)
    }

    fn targets(&self, to: &FlowTo) -> Vec<usize> {
        match to {
            FlowTo::All => (0..self.downstream.len()).collect(),
            FlowTo::None => Vec::new(),
            FlowTo::Tasks(ts) => self
                .downstream
                .iter()
                .enumerate()
                .filter(|(_, d)| ts.contains(d))
                .map(|(i, _)| i)
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key_groups;
    use proptest::prelude::*;

    /// The placement of known keys, pinned: a change to the hash, the canonical bytes, the
    /// reduction to key groups or their division among slots moves keys to other slots (their
    /// state and dedup ids would no longer be found), so it must show up here and come with a
    /// new [`ROUTING`] name.
    #[test]
    fn key_placement_is_pinned() {
        let key = |json: &str| serde_json::from_str::<Value>(json).unwrap();
        for (json, hash, key_group, slots) in PINNED {
            let k = key(json);
            assert_eq!(key_hash(&k), hash, "hash of {json}");
            assert_eq!(
                key_groups::key_group_of(hash, 256),
                key_group,
                "key group of {json}"
            );
            let got = [1, 2, 3, 7].map(|n| hash_peer(key_hash(&k), n, 256));
            assert_eq!(got, slots, "slots of {json}");
        }
        // Compound keys (`group_by_key` with several fields) are lists of the fields' values.
        let s = seg(r#"{"candidate":"cand_03","minute":28333333}"#);
        let compound = GroupKey::Many(vec!["candidate".into(), "minute".into()]);
        assert_eq!(
            [1, 2, 3, 7].map(|n| key_peer(&compound, &s, n, 256).unwrap()),
            PINNED[14].3
        );
        assert_eq!(ROUTING, "xxh3-64/seed-0/canonical-v1/key-groups/contiguous");
        assert_eq!(
            placement(256),
            "xxh3-64/seed-0/canonical-v1/key-groups/contiguous/256"
        );
    }

    /// (key as JSON, xxh3-64 of its canonical bytes, key group of 256, slot for 1, 2, 3 and 7
    /// peers.) Computed independently of this crate: the hashes by a Python script (the
    /// canonical bytes by hand, the `xxhash` package's xxh3_64); the key group as the hash's top
    /// byte (`⌊h · 256 / 2⁶⁴⌋`) and the slot by scanning the ranges `[⌊i·256/n⌋, ⌊(i+1)·256/n⌋)`
    /// for the one holding it, in Python, not copied from this crate's output.
    const PINNED: [(&str, u64, usize, [usize; 4]); 17] = [
        ("\"cand_01\"", 0xbfb997f2e7bb95e6, 191, [0, 1, 2, 5]),
        ("\"cand_02\"", 0x35882d8faf8e70ad, 53, [0, 0, 0, 1]),
        ("\"cand_03\"", 0x2bbc68e65ffe4a71, 43, [0, 0, 0, 1]),
        ("\"cand_04\"", 0x7962ba44810f8c94, 121, [0, 0, 1, 3]),
        ("\"voter-4242\"", 0x6ddbd8cb72cc75ee, 109, [0, 0, 1, 3]),
        ("\"\"", 0xaa269631f2ca76e1, 170, [0, 1, 2, 4]),
        ("0", 0x8da2b7ab8b1ee0e7, 141, [0, 1, 1, 3]),
        ("1", 0x77b9ee4e4f0d5d17, 119, [0, 0, 1, 3]),
        ("4242", 0x5f18a5188cf48ad6, 95, [0, 0, 1, 2]),
        ("-1", 0x51957c455b8e6c65, 81, [0, 0, 0, 2]),
        ("1.0", 0x12863638c08b810c, 18, [0, 0, 0, 0]),
        ("1.5", 0x1feb7ca504b6705d, 31, [0, 0, 0, 0]),
        ("true", 0x070d80d6a76865f3, 7, [0, 0, 0, 0]),
        ("null", 0xc44bdff4074eecdb, 196, [0, 1, 2, 5]),
        (
            "[\"cand_03\",28333333]",
            0xeb2e160674dcbefa,
            235,
            [0, 1, 2, 6],
        ),
        (
            "{\"team\":\"red\",\"n\":1}",
            0x852db33145c4204e,
            133,
            [0, 1, 1, 3],
        ),
        ("18446744073709551615", 0x461f577b67b45767, 70, [0, 0, 0, 1]),
    ];

    proptest! {
        #[test]
        fn hash_peer_is_in_range_and_follows_the_key_group(
            hash in any::<u64>(),
            n in 1_usize..64,
            key_groups in 64_usize..=key_groups::MAX_KEY_GROUPS,
        ) {
            let peer = hash_peer(hash, n, key_groups);
            prop_assert!(peer < n);
            let kg = key_groups::key_group_of(hash, key_groups);
            prop_assert!(key_groups::range_of(peer, n, key_groups).contains(&kg));
        }
    }

    fn seg(json: &str) -> Segment {
        crate::segment::from_json_slice(json.as_bytes()).unwrap()
    }

    fn registry() -> Registry {
        let mut r = Registry::new();
        r.register_predicate("adult", |s, _| {
            s.get("age").and_then(Value::as_i64).unwrap_or(0) >= 18
        });
        r.register_predicate("vip", |s, _| {
            s.get("vip").and_then(Value::as_bool).unwrap_or(false)
        });
        r
    }

    fn cond(json: &str) -> FlowCondition {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn flow_conditions_route_per_segment() {
        let r = registry();
        let plan = FlowPlan::new(
            "f",
            vec!["adults".into(), "minors".into(), "vips".into()],
            &[
                cond(
                    r#"{"from":"f","to":["vips"],"predicate":"vip","short_circuit":true,"exclude_keys":["age"]}"#,
                ),
                cond(r#"{"from":"f","to":["adults"],"predicate":"adult"}"#),
                cond(r#"{"from":"all","to":["minors"],"predicate":["not","adult"]}"#),
            ],
        );
        let dests = |s: &str| plan.route(&r, &seg(s), false).unwrap().destinations;
        assert_eq!(
            dests(r#"{"age":30,"vip":true}"#),
            vec![(2, vec!["age".to_owned()])]
        );
        assert_eq!(dests(r#"{"age":30}"#), vec![(0, vec![])]);
        assert_eq!(dests(r#"{"age":3}"#), vec![(1, vec![])]);
        assert_eq!(plan.route(&r, &seg("{}"), true), None);
    }

    #[test]
    fn a_segment_no_condition_matches_is_unmatched_but_to_none_is_a_match() {
        let r = registry();
        let plan = FlowPlan::new(
            "f",
            vec!["adults".into()],
            &[
                cond(r#"{"from":"f","to":["adults"],"predicate":"adult"}"#),
                cond(r#"{"from":"f","to":"none","predicate":"vip"}"#),
            ],
        );
        let route = |s: &str| plan.route(&r, &seg(s), false).unwrap();
        assert_eq!(route(r#"{"age":30}"#).destinations, vec![(0, vec![])]);
        assert!(route(r#"{"age":30}"#).matched);
        let dropped = route(r#"{"age":3,"vip":true}"#);
        assert!(dropped.destinations.is_empty() && dropped.matched);
        let unmatched = route(r#"{"age":3}"#);
        assert!(unmatched.destinations.is_empty() && !unmatched.matched);
        // Without conditions every segment goes everywhere: nothing is unmatched.
        let plain = FlowPlan::new("f", vec!["adults".into()], &[]);
        assert!(plain.route(&r, &seg("{}"), false).unwrap().matched);
    }

    #[test]
    fn group_keys() {
        let s = seg(r#"{"a":1,"b":"x"}"#);
        assert_eq!(group_key(&GroupKey::One("a".into()), &s), Ok(Value::Int(1)));
        assert_eq!(
            group_key(&GroupKey::Many(vec!["b".into(), "a".into()]), &s),
            Ok(Value::List(vec![Value::from("x"), Value::Int(1)]))
        );
        assert_eq!(
            group_key(&GroupKey::One("c".into()), &s),
            Err("group_by_key field \"c\" is missing".to_owned())
        );
    }

    #[test]
    fn key_peer_and_group_key_ref_agree_with_group_key() {
        let segs = [
            seg(r#"{"a":1,"b":"x"}"#),
            seg(r#"{"a":"cand_03","b":[1,2.5,null]}"#),
            seg(r#"{"b":{"k":true}}"#),
            seg(r#"{"a":18446744073709551615}"#),
        ];
        let keys = [
            GroupKey::One("a".into()),
            GroupKey::One("b".into()),
            GroupKey::Many(vec!["b".into(), "a".into()]),
            GroupKey::Many(vec!["a".into()]),
        ];
        for s in &segs {
            for k in &keys {
                let owned = group_key(k, s);
                assert_eq!(group_key_ref(k, s).map(Cow::into_owned), owned.clone());
                for n in [0, 1, 2, 3, 7, 64] {
                    let expected = owned.clone().map(|v| {
                        if n <= 1 {
                            0
                        } else {
                            hash_peer(key_hash(&v), n, 256)
                        }
                    });
                    assert_eq!(key_peer(k, s, n, 256), expected, "{k:?} {n}");
                }
            }
        }
    }

    #[test]
    fn unconditional_plans() {
        let plain = FlowPlan::new("f", vec!["a".into(), "b".into()], &[]);
        assert!(plain.unconditional());
        assert_eq!(plain.downstream_len(), 2);
        let r = registry();
        assert_eq!(
            plain.route(&r, &seg("{}"), false).unwrap().destinations,
            vec![(0, vec![]), (1, vec![])]
        );
        let only_errors = FlowPlan::new(
            "f",
            vec!["a".into()],
            &[cond(
                r#"{"from":"f","to":["a"],"predicate":"sardonyx/always","thrown_exception":true}"#,
            )],
        );
        assert!(only_errors.unconditional());
        let conditional = FlowPlan::new(
            "f",
            vec!["a".into()],
            &[cond(r#"{"from":"f","to":["a"],"predicate":"vip"}"#)],
        );
        assert!(!conditional.unconditional());
    }
}
