//! Property tests of the pure window logic.

use proptest::prelude::*;
use sardonyx_windowing::aggregation::{average, collect, count, max, min, sum};
use sardonyx_windowing::session::sessions_of;
use sardonyx_windowing::{
    Aggregation, Extents, FireEvent, Map, Snapshot, Transition, TriggerSpec, Value, WindowOperator,
    WindowSpec,
};

fn seg(t: i64, x: i64) -> Map {
    let mut m = Map::new();
    m.insert("t", t);
    m.insert("x", x);
    m
}

proptest! {
    #[test]
    fn every_value_is_in_exactly_its_extents(
        m in -1_000i64..1_000,
        r in 1i64..200,
        s_frac in 1i64..=200,
        dv in 0i64..10_000,
    ) {
        let s = 1 + (s_frac - 1) % r; // 1 <= s <= r
        let x = Extents::sliding(m, r, s);
        let v = m + dv;
        let ids = x.ids(v).unwrap();
        prop_assert!(!ids.is_empty());
        for w in ids.clone() {
            prop_assert!(x.lower(w) <= v && v <= x.upper(w), "v {} not in extent {}", v, w);
        }
        // Bounds grow with w, so the neighbours outside the range are enough.
        if *ids.start() > 0 {
            prop_assert!(x.upper(ids.start() - 1) < v);
        }
        prop_assert!(x.lower(ids.end() + 1) > v);
        prop_assert_eq!(x.ids(m - 1 - dv % 5), None);
    }

    #[test]
    fn sliding_extent_count(
        m in -1_000i64..1_000,
        s in 1i64..50,
        k in 1i64..10,
        extra in 0i64..50,
        dv in 0i64..10_000,
    ) {
        // s | r: exactly r/s extents per value (also near m, where they are clipped).
        let r = s * k;
        let n = Extents::sliding(m, r, s).ids(m + dv).unwrap().count() as i64;
        prop_assert_eq!(n, k);
        // Otherwise ⌊r/s⌋ or ⌈r/s⌉ (both occur), never anything else.
        let r2 = r + extra % s;
        let n2 = Extents::sliding(m, r2, s).ids(m + dv).unwrap().count() as i64;
        prop_assert!(n2 == r2 / s || n2 == (r2 + s - 1) / s);
    }

    #[test]
    fn session_merging_is_independent_of_arrival_order(
        (times, shuffled) in prop::collection::vec(0i64..500, 1..40)
            .prop_flat_map(|v| (Just(v.clone()), Just(v).prop_shuffle())),
        gap in 0i64..30,
    ) {
        let run = |ts: &[i64]| {
            let mut o = WindowOperator::new(
                vec![
                    WindowSpec::session("c", "t", gap, count()),
                    WindowSpec::session("s", "t", gap, sum("x")),
                    WindowSpec::session("lo", "t", gap, min("x")),
                    WindowSpec::session("avg", "t", gap, average("x")),
                ],
                vec![],
            )
            .unwrap();
            for &t in ts {
                o.on_segment(&seg(t, t * 3 - 700), &Value::Null).unwrap();
            }
            ["c", "s", "lo", "avg"].map(|w| o.extents(w, &Value::Null))
        };
        let a = run(&times);
        let b = run(&shuffled);
        let bounds: Vec<(i64, i64)> = a[0]
            .iter()
            .map(|x| (x.lower.unwrap(), x.upper.unwrap()))
            .collect();
        prop_assert_eq!(bounds, sessions_of(&times, gap));
        // Average sums are integers here, so even the float average is exact in any order.
        prop_assert_eq!(a, b);
    }

    #[test]
    fn applying_created_updates_equals_direct_computation(
        xs in prop::collection::vec(-1_000_000i64..1_000_000, 0..50),
        split in 0usize..50,
    ) {
        let segs: Vec<Map> = xs.iter().map(|&x| seg(0, x)).collect();
        let fold = |agg: &dyn Aggregation, segs: &[Map]| {
            let mut state = agg.init();
            for s in segs {
                let u = agg.create_update(&state, s).unwrap();
                state = agg.apply_update(state, &u);
            }
            state
        };
        let n = xs.len() as i64;
        let total: i64 = xs.iter().sum();
        prop_assert_eq!(fold(&*count(), &segs), Value::Int(n));
        prop_assert_eq!(fold(&*sum("x"), &segs), Value::Int(total));
        prop_assert_eq!(fold(&*min("x"), &segs), Value::from(xs.iter().min().copied()));
        prop_assert_eq!(fold(&*max("x"), &segs), Value::from(xs.iter().max().copied()));
        let avg = fold(&*average("x"), &segs);
        let avg = avg.as_map().unwrap();
        prop_assert_eq!(avg.get("n"), Some(&Value::Int(n)));
        prop_assert_eq!(avg.get("sum"), Some(&Value::Int(total)));
        let expected = if n == 0 { Value::Null } else { Value::Float(total as f64 / n as f64) };
        prop_assert_eq!(avg.get("average"), Some(&expected));
        let c = fold(&*collect(), &segs);
        prop_assert_eq!(c.as_list().unwrap().len(), xs.len());
        // Merging the folds of two halves equals folding everything.
        let k = split.min(segs.len());
        for agg in [count(), sum("x"), min("x"), max("x"), average("x"), collect()] {
            let merged = agg.merge(fold(&*agg, &segs[..k]), fold(&*agg, &segs[k..]));
            prop_assert_eq!(merged, fold(&*agg, &segs), "{}", agg.name());
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Segment { t: i64, group: u8, x: i64 },
    Bad,
    Watermark(i64),
    Timer(i64),
    Recovered,
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0i64..400, 0u8..3, -50i64..50).prop_map(|(t, group, x)| Op::Segment { t, group, x }),
        1 => Just(Op::Bad),
        2 => (0i64..40).prop_map(Op::Watermark),
        1 => (0i64..150).prop_map(Op::Timer),
        1 => Just(Op::Recovered),
    ]
}

/// All window kinds and trigger kinds; without the global window (which holds its groups
/// forever), groups also leave the group table and their ids are reused.
fn full_operator(with_global: bool) -> WindowOperator {
    let mut windows = vec![
        WindowSpec::fixed("fixed", "t", 50, count()).allowed_lateness(10),
        WindowSpec::sliding("sliding", "t", 60, 20, sum("x")),
        WindowSpec::session("session", "t", 15, collect()).allowed_lateness(5),
        WindowSpec::global("global", average("x")),
        WindowSpec::fixed("minimum", "t", 30, min("x")).min_value(20),
    ];
    let mut triggers = vec![
        TriggerSpec::segment("fixed", "every-3", 3).discarding(),
        TriggerSpec::timer("fixed", "tick", 100),
        TriggerSpec::watermark("sliding", "close", 0).discarding(),
        TriggerSpec::segment("sliding", "all-2", 2).fire_all_extents(true),
        TriggerSpec::percentile_watermark("session", "half", 0.5),
        TriggerSpec::punctuation("global", "fives", |_, s| {
            s.get("x")
                .and_then(Value::as_i64)
                .is_some_and(|x| x % 5 == 0)
        })
        .discarding()
        .fire_all_extents(true),
        TriggerSpec::watermark("minimum", "close", 3),
    ];
    if !with_global {
        windows.retain(|w| w.id != "global");
        triggers.retain(|t| t.window != "global");
    }
    WindowOperator::new(windows, triggers).unwrap()
}

/// Runs `ops` (and, if `complete`, job completion) and returns the operator and every
/// transition it returned, in order.
fn run(ops: &[Op], complete: bool, with_global: bool) -> (WindowOperator, Vec<Transition>) {
    let mut o = full_operator(with_global);
    let mut log = Vec::new();
    let mut wm = 0;
    let mut now = 0;
    for op in ops {
        let step = match op {
            Op::Segment { t, group, x } => {
                o.on_segment(&seg(*t, *x), &Value::from(i64::from(*group)))
            }
            Op::Bad => {
                let mut m = Map::new();
                m.insert("t", "noon");
                let before = o.snapshot();
                assert!(o.on_segment(&m, &Value::Null).is_err());
                assert_eq!(o.snapshot(), before);
                continue;
            }
            Op::Watermark(d) => {
                wm += d;
                Ok(o.on_watermark(wm))
            }
            Op::Timer(d) => {
                now += d;
                Ok(o.on_timer(now))
            }
            Op::Recovered => Ok(o.on_recovered()),
        }
        .unwrap();
        // The due index matches the state, and nothing due at the watermark was left behind.
        o.check_due_index().unwrap();
        log.extend(step.transitions);
    }
    if complete {
        log.extend(o.on_job_completed().transitions);
        o.check_due_index().unwrap();
    }
    (o, log)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn replaying_transitions_rebuilds_the_state(
        ops in prop::collection::vec(op_strategy(), 0..150),
        complete in any::<bool>(),
        with_global in any::<bool>(),
        split in any::<prop::sample::Index>(),
    ) {
        let (original, log) = run(&ops, complete, with_global);
        let cfg = bincode::config::standard();
        // Every transition goes through bincode, as it would through the durable log.
        let log: Vec<Transition> = log
            .iter()
            .map(|t| {
                let bytes = bincode::serde::encode_to_vec(t, cfg).unwrap();
                bincode::serde::decode_from_slice(&bytes, cfg).unwrap().0
            })
            .collect();
        // Replay everything.
        let mut full = full_operator(with_global);
        for t in &log {
            full.apply(t).unwrap();
        }
        prop_assert_eq!(full.snapshot(), original.snapshot());
        // Replay a prefix, snapshot through bincode, restore into a fresh operator, replay the rest.
        let k = split.index(log.len() + 1);
        let mut a = full_operator(with_global);
        for t in &log[..k] {
            a.apply(t).unwrap();
        }
        let bytes = bincode::serde::encode_to_vec(a.snapshot(), cfg).unwrap();
        let (snap, _): (Snapshot, usize) = bincode::serde::decode_from_slice(&bytes, cfg).unwrap();
        let mut b = full_operator(with_global);
        b.restore(snap).unwrap();
        for t in &log[k..] {
            b.apply(t).unwrap();
        }
        prop_assert_eq!(b.snapshot(), original.snapshot());
        b.check_due_index().unwrap();
        // And the rebuilt operator behaves the same from there on.
        let mut original = original;
        let next = seg(390, 10);
        prop_assert_eq!(
            b.on_segment(&next, &Value::from(1)).unwrap(),
            original.on_segment(&next, &Value::from(1)).unwrap()
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Job completion in bounded steps gives the firings and transitions of completion in one
    /// step, in the same order, and leaves the same state; no step exceeds its bound by more
    /// one group's firings, and a step replayed from the log alone rebuilds the state.
    #[test]
    fn completion_in_bounded_steps_equals_completion_at_once(
        ops in prop::collection::vec(op_strategy(), 0..150),
        with_global in any::<bool>(),
        max_firings in 0_usize..6,
    ) {
        let (mut once, _) = run(&ops, false, with_global);
        let (mut stepwise, _) = run(&ops, false, with_global);
        let mut replica = full_operator(with_global);
        replica.restore(stepwise.snapshot()).unwrap();
        let all = once.on_job_completed();
        let mut completion = sardonyx_windowing::Completion::default();
        let mut firings = Vec::new();
        let mut transitions = Vec::new();
        let mut steps = 0;
        loop {
            let mut step = sardonyx_windowing::Step::default();
            let done = stepwise.on_job_completed_into(&mut completion, &mut step, max_firings);
            steps += 1;
            prop_assert!(steps <= all.firings.len() + 1, "no progress");
            // A step stops at the first group that reaches the bound: without its last group's
            // firings, it is below the bound.
            if !done {
                let last = step.firings.last().map(|f| (&f.window, &f.trigger, &f.group));
                let last_group = step
                    .firings
                    .iter()
                    .rev()
                    .take_while(|f| Some((&f.window, &f.trigger, &f.group)) == last)
                    .count();
                prop_assert!(step.firings.len() >= max_firings.max(1));
                prop_assert!(step.firings.len() - last_group < max_firings.max(1));
            }
            for t in &step.transitions {
                replica.apply(t).unwrap();
            }
            prop_assert_eq!(replica.snapshot(), stepwise.snapshot());
            firings.extend(step.firings);
            transitions.extend(step.transitions);
            if done {
                break;
            }
        }
        prop_assert!(completion.is_done());
        prop_assert_eq!(firings, all.firings);
        prop_assert_eq!(transitions, all.transitions);
        prop_assert_eq!(stepwise.snapshot(), once.snapshot());
        stepwise.check_due_index().unwrap();
        // Done stays done.
        let mut after = sardonyx_windowing::Step::default();
        prop_assert!(stepwise.on_job_completed_into(&mut completion, &mut after, 1));
        prop_assert!(after.is_empty());
    }
}

proptest! {
    /// `Display` writes JSON: any string (quotes, backslashes, control and non-ASCII characters
    /// included), as a value and as a field name, reads back through serde_json as itself.
    #[test]
    fn display_writes_json_strings_that_read_back(
        s in "(\\PC|[\"\\\\\u{0}-\u{1f}\u{7f}é☃😀])*"
    ) {
        let v = Value::from(s.as_str());
        let back: String = serde_json::from_str(&v.to_string()).unwrap();
        prop_assert_eq!(&back, &s);
        let mut m = Map::new();
        m.insert(s.as_str(), 1_i64);
        let back: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&Value::Map(m).to_string()).unwrap();
        prop_assert_eq!(back.keys().next().map(String::as_str), Some(s.as_str()));
    }
}

/// Late segments within a long allowed lateness each fire the watermark trigger again, moving
/// their extent's due key back and forth: the lazy due index stays bounded (it is rebuilt from
/// the state once stale entries pile up), and every late segment still fires.
#[test]
fn the_due_index_stays_bounded_when_keys_go_back_and_forth() {
    let windows = vec![WindowSpec::fixed("w", "t", 10, count()).allowed_lateness(1_000_000)];
    let triggers = vec![TriggerSpec::watermark("w", "close", 0)];
    let mut o = WindowOperator::new(windows, triggers).unwrap();
    o.on_segment(&seg(0, 1), &Value::from(1)).unwrap();
    assert_eq!(o.on_watermark(100).firings.len(), 1);
    let mut fired = 0;
    let mut largest = 0;
    for i in 0..20_000 {
        let step = o.on_segment(&seg(i % 10, 1), &Value::from(1)).unwrap();
        fired += step.firings.len();
        largest = largest.max(o.due_index_len(0));
        if i % 1000 == 0 {
            o.check_due_index().unwrap();
        }
    }
    assert_eq!(fired, 20_000);
    assert!(
        largest <= 2 + 4096 + 1,
        "the due index grew to {largest} entries"
    );
    // The extent still closes when the watermark passes its lateness.
    let last = o.on_watermark(1_000_100);
    assert!(
        last.firings.is_empty(),
        "nothing changed since the last firing"
    );
    assert_eq!(o.due_index_len(0), 0);
}

#[derive(Debug, Clone)]
enum SessionOp {
    Segment { t: i64, group: u8 },
    Watermark(i64),
}

fn session_op_strategy() -> impl Strategy<Value = SessionOp> {
    prop_oneof![
        4 => (0i64..300, 0u8..2).prop_map(|(t, group)| SessionOp::Segment { t, group }),
        1 => (0i64..30).prop_map(SessionOp::Watermark),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Invariant "sessions close once" (DESIGN §4): for any events and watermarks, with
    /// `allowed_lateness <= delay`, the watermark trigger fires every session of the accepted
    /// (not late) events exactly once — by the watermark only once it passed
    /// `last + timeout_gap + delay`, otherwise at job completion — and with its whole state;
    /// it fires nothing else.
    #[test]
    fn sessions_fire_once_with_their_whole_state(
        ops in prop::collection::vec(session_op_strategy(), 0..120),
        gap in 0i64..20,
        delay in 0i64..15,
        lateness_frac in 0i64..=100,
    ) {
        let lateness = delay * lateness_frac / 100;
        let mut o = WindowOperator::new(
            vec![WindowSpec::session("s", "t", gap, collect()).allowed_lateness(lateness)],
            vec![TriggerSpec::watermark("s", "closed", delay)],
        )
        .unwrap();
        let mut wm = 0;
        let mut accepted: Vec<Vec<(i64, i64)>> = vec![Vec::new(); 2];
        let mut firings = Vec::new();
        for (id, op) in ops.iter().enumerate() {
            let step = match op {
                SessionOp::Segment { t, group } => {
                    let mut m = seg(*t, id as i64);
                    m.insert("id", id as i64);
                    let step = o.on_segment(&m, &Value::from(i64::from(*group))).unwrap();
                    if step.late.is_empty() {
                        accepted[usize::from(*group)].push((*t, id as i64));
                    }
                    step
                }
                SessionOp::Watermark(d) => {
                    wm += d;
                    o.on_watermark(wm)
                }
            };
            o.check_due_index().unwrap();
            for f in step.firings {
                prop_assert_eq!(f.event, FireEvent::Watermark, "{:?}", f);
                let upper = f.upper.unwrap();
                prop_assert!(
                    wm > upper + gap + delay,
                    "fired {:?} at watermark {} <= {} + gap {} + delay {}", f, wm, upper, gap, delay
                );
                firings.push(f);
            }
        }
        for f in o.on_job_completed().firings {
            prop_assert_eq!(f.event, FireEvent::JobCompleted);
            firings.push(f);
        }
        // group, lower, upper, sorted ids
        let ids = |state: &Value| {
            let mut v: Vec<i64> = state
                .as_list()
                .unwrap()
                .iter()
                .map(|s| s.as_map().unwrap().get("id").unwrap().as_i64().unwrap())
                .collect();
            v.sort_unstable();
            v
        };
        let mut got: Vec<(i64, i64, i64, Vec<i64>)> = firings
            .iter()
            .map(|f| (f.group.as_i64().unwrap(), f.lower.unwrap(), f.upper.unwrap(), ids(&f.state)))
            .collect();
        got.sort();
        let mut want = Vec::new();
        for (g, events) in accepted.iter().enumerate() {
            let times: Vec<i64> = events.iter().map(|e| e.0).collect();
            for (lo, hi) in sessions_of(&times, gap) {
                let mut in_session: Vec<i64> = events
                    .iter()
                    .filter(|(t, _)| lo <= *t && *t <= hi)
                    .map(|e| e.1)
                    .collect();
                in_session.sort_unstable();
                want.push((g as i64, lo, hi, in_session));
            }
        }
        want.sort();
        prop_assert_eq!(got, want);
    }
}

/// A number, or something that is not one, for an aggregation's state or update: integers
/// near the overflow bounds, floats, and values a sum treats as zero.
fn number_like() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::Int),
        prop_oneof![
            Just(i64::MAX),
            Just(i64::MIN),
            Just(i64::MAX - 1),
            Just(-1_i64),
            Just(1)
        ]
        .prop_map(Value::Int),
        any::<f64>().prop_map(Value::Float),
        Just(Value::Null),
        Just(Value::from("7")),
        (i64::MAX as u64 + 1..=u64::MAX).prop_map(Value::UInt),
    ]
}

proptest! {
    /// Every built-in aggregation's in-place update gives exactly the state its
    /// `apply_update` gives (same variant, same bits), whatever the state and the update.
    #[test]
    fn an_update_in_place_is_the_update(state in number_like(), update in number_like()) {
        let aggs: [std::sync::Arc<dyn Aggregation>; 6] =
            [count(), sum("x"), min("x"), max("x"), average("x"), collect()];
        for agg in aggs {
            let want = agg.apply_update(state.clone(), &update);
            let mut got = state.clone();
            agg.apply_update_in_place(&mut got, &update);
            prop_assert_eq!(format!("{got:?}"), format!("{want:?}"), "{}", agg.name());
        }
    }
}
