//! The window operator, with expected firings worked out by hand from DESIGN §4.

use std::sync::Arc;

use sardonyx_windowing::aggregation::{collect, count, sum};
use sardonyx_windowing::{
    Aggregation, AggregationError, ExtentView, FireEvent, Firing, Map, Step, Transition,
    TriggerSpec, Value, WindowOperator, WindowSpec,
};

fn seg(t: i64) -> Map {
    let mut m = Map::new();
    m.insert("t", t);
    m
}

fn seg_with(t: i64, k: &str, v: impl Into<Value>) -> Map {
    let mut m = seg(t);
    m.insert(k, v);
    m
}

fn op(windows: Vec<WindowSpec>, triggers: Vec<TriggerSpec>) -> WindowOperator {
    WindowOperator::new(windows, triggers).unwrap()
}

/// Feeds segments without grouping, returning the combined step.
fn feed(op: &mut WindowOperator, ts: &[i64]) -> Step {
    let mut step = Step::default();
    for &t in ts {
        step.extend(op.on_segment(&seg(t), &Value::Null).unwrap());
    }
    step
}

/// (lower, upper, state, event) of each firing.
fn fired(step: &Step) -> Vec<(Option<i64>, Option<i64>, Value, FireEvent)> {
    step.firings
        .iter()
        .map(|f| (f.lower, f.upper, f.state.clone(), f.event))
        .collect()
}

fn ext(lower: i64, upper: i64, state: impl Into<Value>) -> ExtentView {
    ExtentView {
        lower: Some(lower),
        upper: Some(upper),
        state: state.into(),
    }
}

use FireEvent::{JobCompleted, Punctuation, Segment, Timer, Watermark};

fn i(v: i64) -> Value {
    Value::Int(v)
}

// ----- extents through the operator -----

#[test]
fn sliding_m0_r20_s5_example() {
    // DESIGN §4: m=0, r=20, s=5. v=4 lies in extents 0..=3: [0,4], [0,9], [0,14], [0,19];
    // v=5 lies in extents 1..=4: [0,9], [0,14], [0,19], [5,24].
    let mut o = op(vec![WindowSpec::sliding("w", "t", 20, 5, count())], vec![]);
    feed(&mut o, &[4, 5]);
    assert_eq!(
        o.extents("w", &Value::Null),
        vec![
            ext(0, 4, 1),
            ext(0, 9, 2),
            ext(0, 14, 2),
            ext(0, 19, 2),
            ext(5, 24, 1)
        ]
    );
}

#[test]
fn fixed_extents_and_min_value() {
    let mut o = op(
        vec![WindowSpec::fixed("w", "t", 60_000, count()).min_value(1_000)],
        vec![],
    );
    // With m = 1000: 60999 is in extent 0 = [1000, 60999]; 61000 in extent 1 = [61000, 120999].
    feed(&mut o, &[1_000, 60_999, 61_000]);
    assert_eq!(
        o.extents("w", &Value::Null),
        vec![ext(1_000, 60_999, 2), ext(61_000, 120_999, 1)]
    );
    let step = o.on_segment(&seg(999), &Value::Null).unwrap();
    assert!(step.firings.is_empty());
    assert_eq!(step.late.len(), 1);
    assert_eq!(step.late[0].window, "w");
    assert_eq!(step.late[0].segment, seg(999));
    assert_eq!(
        step.late[0].reason,
        r#"value 999 of "t" is below min_value 1000"#
    );
    assert_eq!(o.late_count("w"), Some(1));
}

#[test]
fn rfc3339_event_times() {
    let mut o = op(vec![WindowSpec::fixed("w", "t", 60_000, count())], vec![]);
    let mut m = Map::new();
    m.insert("t", "2023-11-14T22:13:20Z"); // 1_700_000_000_000 ms
    o.on_segment(&m, &Value::Null).unwrap();
    // 1_700_000_000_000 / 60_000 = 28_333_333 (remainder 20_000).
    assert_eq!(
        o.extents("w", &Value::Null),
        vec![ext(1_699_999_980_000, 1_700_000_039_999, 1)]
    );
}

// ----- segment trigger -----

#[test]
fn segment_trigger_accumulating() {
    let mut o = op(
        vec![WindowSpec::fixed("w", "t", 10, count())],
        vec![TriggerSpec::segment("w", "every-2", 2)],
    );
    // t=1: count 1; t=3: count 2, 2nd segment -> fire [0,9]=2; t=5: [0,9]=3;
    // t=12: 4th segment -> fire only the segment's extent [10,19]=1;
    // t=7: [0,9]=4; t=8: 6th -> fire [0,9]=5.
    let step = feed(&mut o, &[1, 3, 5, 12, 7, 8]);
    assert_eq!(
        fired(&step),
        vec![
            (Some(0), Some(9), i(2), Segment),
            (Some(10), Some(19), i(1), Segment),
            (Some(0), Some(9), i(5), Segment),
        ]
    );
    assert_eq!(
        o.extents("w", &Value::Null),
        vec![ext(0, 9, 5), ext(10, 19, 1)]
    );
}

#[test]
fn segment_trigger_discarding() {
    let mut o = op(
        vec![WindowSpec::fixed("w", "t", 10, count())],
        vec![TriggerSpec::segment("w", "every-2", 2).discarding()],
    );
    // t=1,3 -> fire [0,9]=2, reset to 0; t=5 -> 1; t=12 -> fire [10,19]=1, reset;
    // t=7 -> [0,9]=2; t=8 -> fire [0,9]=3 (5, 7, 8), reset.
    let step = feed(&mut o, &[1, 3, 5, 12, 7, 8]);
    assert_eq!(
        fired(&step),
        vec![
            (Some(0), Some(9), i(2), Segment),
            (Some(10), Some(19), i(1), Segment),
            (Some(0), Some(9), i(3), Segment),
        ]
    );
    assert_eq!(
        o.extents("w", &Value::Null),
        vec![ext(0, 9, 0), ext(10, 19, 0)]
    );
}

#[test]
fn segment_trigger_fire_all_extents() {
    let mut o = op(
        vec![WindowSpec::fixed("w", "t", 10, count())],
        vec![TriggerSpec::segment("w", "every-2", 2).fire_all_extents(true)],
    );
    // t=1,3 -> fire all: [0,9]=2; t=5 -> [0,9]=3; t=12 -> fire all: [0,9]=3, [10,19]=1.
    let step = feed(&mut o, &[1, 3, 5, 12]);
    assert_eq!(
        fired(&step),
        vec![
            (Some(0), Some(9), i(2), Segment),
            (Some(0), Some(9), i(3), Segment),
            (Some(10), Some(19), i(1), Segment),
        ]
    );
}

#[test]
fn segment_trigger_on_sliding_fires_every_extent_of_the_segment() {
    let mut o = op(
        vec![WindowSpec::sliding("w", "t", 10, 5, count())],
        vec![TriggerSpec::segment("w", "each", 1)],
    );
    // m=0, r=10, s=5: 7 lies in extents 1 = [0,9] and 2 = [5,14].
    let step = feed(&mut o, &[7]);
    assert_eq!(
        fired(&step),
        vec![
            (Some(0), Some(9), i(1), Segment),
            (Some(5), Some(14), i(1), Segment)
        ]
    );
}

// ----- grouping -----

#[test]
fn grouping_keeps_per_group_states_and_fires_per_group() {
    let mut o = op(
        vec![WindowSpec::fixed("w", "t", 10, count())],
        vec![TriggerSpec::segment("w", "every-2", 2)],
    );
    let a = Value::from("a");
    let b = Value::from("b");
    let mut firings: Vec<Firing> = Vec::new();
    for (t, g) in [(1, &a), (2, &b), (3, &a), (4, &b), (5, &b)] {
        firings.extend(o.on_segment(&seg(t), g).unwrap().firings);
    }
    // a: t=1, t=3 -> 2nd segment of a fires a's [0,9]=2. b: t=2, t=4 -> fires b's [0,9]=2.
    let got: Vec<(Value, Value)> = firings
        .iter()
        .map(|f| (f.group.clone(), f.state.clone()))
        .collect();
    assert_eq!(got, vec![(a.clone(), i(2)), (b.clone(), i(2))]);
    assert_eq!(o.extents("w", &a), vec![ext(0, 9, 2)]);
    assert_eq!(o.extents("w", &b), vec![ext(0, 9, 3)]);
    assert_eq!(o.live_groups(), 2);
}

// ----- timer trigger -----

fn timer_run(discarding: bool) -> Vec<(Option<i64>, Option<i64>, Value, FireEvent)> {
    let t = TriggerSpec::timer("g", "tick", 1_000);
    let t = if discarding { t.discarding() } else { t };
    let mut o = op(vec![WindowSpec::global("g", count())], vec![t]);
    let mut step = o.on_timer(0); // starts the clock: next deadline 1000
    step.extend(feed(&mut o, &[10, 20, 30]));
    step.extend(o.on_timer(999));
    step.extend(o.on_timer(1_000)); // fires; next deadline 2000
    step.extend(feed(&mut o, &[40]));
    step.extend(o.on_timer(2_500)); // fires; next deadline 3000
    step.extend(o.on_timer(2_999));
    step.extend(o.on_timer(3_000)); // fires
    fired(&step)
}

#[test]
fn timer_trigger_accumulating() {
    assert_eq!(
        timer_run(false),
        vec![
            (None, None, i(3), Timer),
            (None, None, i(4), Timer),
            (None, None, i(4), Timer)
        ]
    );
}

#[test]
fn timer_trigger_discarding() {
    // The timer fires all extents, also unchanged ones: after the reset the state is 0.
    assert_eq!(
        timer_run(true),
        vec![
            (None, None, i(3), Timer),
            (None, None, i(1), Timer),
            (None, None, i(0), Timer)
        ]
    );
}

/// A recovered slot's timer deadlines were on the clock of the process that logged them; the
/// new process's monotonic clock starts near 0. Replayed as they are, a deadline logged at
/// 100 000 would stall the timer for 100 s; `restart_timers` starts it afresh, without firing,
/// and replay of its transitions agrees.
#[test]
fn restarted_timers_neither_stall_nor_misfire_after_a_recovery() {
    let spec = || {
        op(
            vec![WindowSpec::global("g", count())],
            vec![TriggerSpec::timer("g", "tick", 1_000)],
        )
    };
    let mut first = spec();
    let mut log = first.on_timer(99_000).transitions; // deadline 100 000 on the old clock
    log.extend(feed(&mut first, &[10, 20]).transitions);
    let mut recovered = spec();
    for t in &log {
        recovered.apply(t).unwrap();
    }
    let restart = recovered.restart_timers(5);
    assert!(restart.firings.is_empty());
    assert_eq!(
        restart.transitions,
        vec![Transition::TimerNext {
            window: 0,
            trigger: 0,
            at: 1_005
        }]
    );
    assert!(recovered.on_timer(1_004).firings.is_empty());
    assert_eq!(
        fired(&recovered.on_timer(1_005)),
        vec![(None, None, i(2), Timer)]
    );
    // Replaying the restart's transition gives the same deadline.
    for t in &restart.transitions {
        first.apply(t).unwrap();
    }
    assert_eq!(
        fired(&first.on_timer(1_005)),
        vec![(None, None, i(2), Timer)]
    );
}

// ----- punctuation trigger -----

fn punct(discarding: bool, all: bool) -> Vec<(Option<i64>, Option<i64>, Value, FireEvent)> {
    let t = TriggerSpec::punctuation("w", "flush", |ctx, s| {
        assert_eq!((ctx.window, ctx.trigger), ("w", "flush"));
        s.get("flush") == Some(&Value::Bool(true))
    })
    .fire_all_extents(all);
    let t = if discarding { t.discarding() } else { t };
    let mut o = op(vec![WindowSpec::fixed("w", "t", 10, count())], vec![t]);
    let mut step = feed(&mut o, &[1, 12]);
    step.extend(
        o.on_segment(&seg_with(2, "flush", true), &Value::Null)
            .unwrap(),
    );
    step.extend(
        o.on_segment(&seg_with(3, "flush", false), &Value::Null)
            .unwrap(),
    );
    step.extend(
        o.on_segment(&seg_with(4, "flush", true), &Value::Null)
            .unwrap(),
    );
    fired(&step)
}

#[test]
fn punctuation_trigger() {
    // Accumulating: t=2 (flush) fires [0,9]=2; t=3 no; t=4 (flush) fires [0,9]=4.
    assert_eq!(
        punct(false, false),
        vec![
            (Some(0), Some(9), i(2), Punctuation),
            (Some(0), Some(9), i(4), Punctuation)
        ]
    );
    // Discarding: [0,9]=2 fired and reset; then 3 and 4 make it 2 again.
    assert_eq!(
        punct(true, false),
        vec![
            (Some(0), Some(9), i(2), Punctuation),
            (Some(0), Some(9), i(2), Punctuation)
        ]
    );
    // All extents: [10,19]=1 fires too, each time.
    assert_eq!(
        punct(false, true),
        vec![
            (Some(0), Some(9), i(2), Punctuation),
            (Some(10), Some(19), i(1), Punctuation),
            (Some(0), Some(9), i(4), Punctuation),
            (Some(10), Some(19), i(1), Punctuation),
        ]
    );
}

#[test]
fn punctuation_sees_the_group() {
    let t = TriggerSpec::punctuation("w", "p", |ctx, _| ctx.group == &Value::from("x"));
    let mut o = op(vec![WindowSpec::fixed("w", "t", 10, count())], vec![t]);
    assert!(o
        .on_segment(&seg(1), &"y".into())
        .unwrap()
        .firings
        .is_empty());
    let f = o.on_segment(&seg(1), &"x".into()).unwrap().firings;
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].group, Value::from("x"));
}

// ----- watermark triggers, out of order, late data, eviction -----

#[test]
fn watermark_trigger_accumulating_with_out_of_order_input() {
    let mut o = op(
        vec![WindowSpec::fixed("w", "t", 10, count())],
        vec![TriggerSpec::watermark("w", "close", 0)],
    );
    let step = feed(&mut o, &[15, 3, 12, 7, 1]);
    assert!(step.firings.is_empty());
    // wm 8 < upper 9: nothing. wm 9 >= 9: [0,9]=3 fires.
    assert!(o.on_watermark(8).firings.is_empty());
    assert_eq!(
        fired(&o.on_watermark(9)),
        vec![(Some(0), Some(9), i(3), Watermark)]
    );
    // wm 10 > 9 + lateness 0: [0,9] is evicted without firing again (unchanged).
    let step = o.on_watermark(10);
    assert!(step.firings.is_empty());
    assert_eq!(o.extents("w", &Value::Null), vec![ext(10, 19, 2)]);
    // wm 25: [10,19]=2 fires, then is evicted.
    assert_eq!(
        fired(&o.on_watermark(25)),
        vec![(Some(10), Some(19), i(2), Watermark)]
    );
    assert_eq!(o.live_extents(), 0);
}

#[test]
fn watermark_trigger_discarding_with_delay() {
    let mut o = op(
        vec![WindowSpec::fixed("w", "t", 10, sum("x")).allowed_lateness(10)],
        vec![TriggerSpec::watermark("w", "close", 5).discarding()],
    );
    o.on_segment(&seg_with(2, "x", 10), &Value::Null).unwrap();
    o.on_segment(&seg_with(4, "x", 5), &Value::Null).unwrap();
    // Deadline 9 + 5 = 14.
    assert!(o.on_watermark(13).firings.is_empty());
    assert_eq!(
        fired(&o.on_watermark(14)),
        vec![(Some(0), Some(9), i(15), Watermark)]
    );
    assert_eq!(o.extents("w", &Value::Null), vec![ext(0, 9, 0)]);
    // Within allowed lateness (wm 14 <= 9 + 10): the update is kept and fires at once, as a
    // segment event, with only the new value (discarding).
    let step = o.on_segment(&seg_with(6, "x", 7), &Value::Null).unwrap();
    assert_eq!(fired(&step), vec![(Some(0), Some(9), i(7), Segment)]);
    // Past 9 + 10 = 19 the extent is evicted (no change since the last firing: no firing).
    assert!(o.on_watermark(20).firings.is_empty());
    assert_eq!(o.live_extents(), 0);
    let step = o.on_segment(&seg_with(6, "x", 1), &Value::Null).unwrap();
    assert_eq!(
        step.late[0].reason,
        r#"value 6 of "t" is late: watermark 20 > upper 9 + allowed_lateness 10"#
    );
    assert_eq!(o.late_count("w"), Some(1));
}

#[test]
fn late_data_is_reported_counted_and_never_updates_state() {
    let mut o = op(
        vec![WindowSpec::fixed("w", "t", 10, count())],
        vec![TriggerSpec::segment("w", "each", 1)],
    );
    feed(&mut o, &[5, 15]);
    o.on_watermark(12); // [0,9] evicted (fired by `each` already, unchanged since)
    let before = o.snapshot();
    let step = o.on_segment(&seg(3), &Value::Null).unwrap();
    assert!(step.firings.is_empty());
    assert_eq!(step.late.len(), 1);
    assert_eq!(
        step.late[0].reason,
        r#"value 3 of "t" is late: watermark 12 > upper 9 + allowed_lateness 0"#
    );
    assert_eq!(o.late_count("w"), Some(1));
    assert_eq!(o.extents("w", &Value::Null), vec![ext(10, 19, 1)]);
    // Only the late counter changed.
    let mut replay = op(
        vec![WindowSpec::fixed("w", "t", 10, count())],
        vec![TriggerSpec::segment("w", "each", 1)],
    );
    replay.restore(before).unwrap();
    for t in &step.transitions {
        replay.apply(t).unwrap();
    }
    assert_eq!(replay.snapshot(), o.snapshot());
    assert_eq!(step.transitions.len(), 1);
}

#[test]
fn sliding_segment_is_late_only_when_all_its_extents_are_closed() {
    let mut o = op(vec![WindowSpec::sliding("w", "t", 10, 5, count())], vec![]);
    feed(&mut o, &[7]); // extents 1 = [0,9] and 2 = [5,14]
    o.on_watermark(10); // [0,9] closes
    assert_eq!(o.extents("w", &Value::Null), vec![ext(5, 14, 1)]);
    // 8 is in [0,9] (closed) and [5,14] (open): not late, updates only [5,14].
    let step = feed(&mut o, &[8]);
    assert!(step.late.is_empty());
    assert_eq!(o.extents("w", &Value::Null), vec![ext(5, 14, 2)]);
    o.on_watermark(15);
    let step = feed(&mut o, &[8]);
    assert_eq!(
        step.late[0].reason,
        r#"value 8 of "t" is late: watermark 15 > upper 14 + allowed_lateness 0"#
    );
}

#[test]
fn eviction_fires_changed_extents_once_more_so_nothing_is_lost() {
    let mut o = op(
        vec![WindowSpec::fixed("w", "t", 10, count())],
        vec![TriggerSpec::segment("w", "every-3", 3).discarding()],
    );
    // 4 segments: the 3rd fires [0,9]=3 and resets; the 4th leaves [0,9]=1 unfired.
    let step = feed(&mut o, &[1, 2, 3, 4]);
    assert_eq!(fired(&step), vec![(Some(0), Some(9), i(3), Segment)]);
    let step = o.on_watermark(10);
    assert_eq!(fired(&step), vec![(Some(0), Some(9), i(1), Watermark)]);
    assert_eq!(o.live_extents(), 0);
    assert_eq!(o.live_groups(), 0);
    // The freed group id is reused by the next new group.
    let step = o.on_segment(&seg(15), &"z".into()).unwrap();
    assert_eq!(
        step.transitions[0],
        Transition::Group {
            id: 0,
            key: "z".into()
        }
    );
}

/// A user aggregation whose update depends on the state: it logs the new absolute value.
struct Ordinal;

impl Aggregation for Ordinal {
    fn name(&self) -> &str {
        "ordinal"
    }
    fn init(&self) -> Value {
        Value::Int(0)
    }
    fn create_update(&self, state: &Value, _segment: &Map) -> Result<Value, AggregationError> {
        Ok(Value::Int(state.as_i64().unwrap_or(0) + 1))
    }
    fn apply_update(&self, _state: Value, update: &Value) -> Value {
        update.clone()
    }
    fn merge(&self, a: Value, b: Value) -> Value {
        Value::Int(a.as_i64().unwrap_or(0) + b.as_i64().unwrap_or(0))
    }
}

#[test]
fn user_aggregation_with_state_dependent_updates() {
    let specs = || vec![WindowSpec::sliding("w", "t", 10, 5, Arc::new(Ordinal))];
    let mut o = op(specs(), vec![]);
    // 3 is in [0,4] and [0,9]; 7 is in [0,9] and [5,14]: the updates of 7 differ (2 and 1).
    let step = feed(&mut o, &[3, 7]);
    assert_eq!(
        step.transitions.last(),
        Some(&Transition::UpdateEach {
            window: 0,
            group: 0,
            extent: 1,
            updates: vec![i(2), i(1)]
        })
    );
    assert_eq!(
        o.extents("w", &Value::Null),
        vec![ext(0, 4, 1), ext(0, 9, 2), ext(5, 14, 1)]
    );
    let mut r = op(specs(), vec![]);
    for t in &step.transitions {
        r.apply(t).unwrap();
    }
    assert_eq!(r.snapshot(), o.snapshot());
}

/// A built-in aggregation's update ignores the state: a segment in several extents of a
/// sliding window makes its update once, logged as one range for all of them.
#[test]
fn a_state_free_update_covers_every_extent_as_one_range() {
    let specs = || vec![WindowSpec::sliding("w", "t", 10, 5, count())];
    let mut o = op(specs(), vec![]);
    // 7 is in [0,9] and [5,14] (extents 1 and 2).
    let step = feed(&mut o, &[7]);
    assert_eq!(
        step.transitions.last(),
        Some(&Transition::UpdateRange {
            window: 0,
            group: 0,
            extent: 1,
            count: 2,
            update: i(1)
        })
    );
    assert_eq!(
        o.extents("w", &Value::Null),
        vec![ext(0, 9, 1), ext(5, 14, 1)]
    );
}

#[test]
fn corrupt_transitions_are_rejected() {
    let mut o = op(vec![WindowSpec::fixed("w", "t", 10, count())], vec![]);
    let e = o
        .apply(&Transition::Update {
            window: 0,
            group: 3,
            extent: 0,
            update: i(1),
        })
        .unwrap_err();
    assert_eq!(e.to_string(), "transition does not apply: no group 3");
    assert!(o.apply(&Transition::Late { window: 9 }).is_err());
    assert_eq!(o.live_extents(), 0);
}

#[test]
fn eviction_keeps_state_bounded() {
    // 1-second fixed and sliding windows, 10x more event time than the range... times 10.
    let mut o = op(
        vec![
            WindowSpec::fixed("f", "t", 1_000, count()),
            WindowSpec::sliding("s", "t", 1_000, 250, count()),
            WindowSpec::session("x", "t", 100, count()),
        ],
        vec![
            TriggerSpec::watermark("f", "close", 0),
            TriggerSpec::watermark("s", "close", 0),
            TriggerSpec::watermark("x", "close", 0),
        ],
    );
    let mut max_live = 0;
    let mut firings = 0;
    for t in (0..100_000).step_by(10) {
        let g = Value::from(t % 3);
        firings += o.on_segment(&seg(t), &g).unwrap().firings.len();
        if t % 100 == 0 {
            firings += o.on_watermark(t - 200).firings.len();
        }
        max_live = max_live.max(o.live_extents());
    }
    // Per group: fixed <= 2 open extents, sliding <= 4 + 1, sessions 1; 3 groups.
    assert!(max_live <= 3 * (2 + 5 + 1), "max live extents {max_live}");
    firings += o.on_job_completed().firings.len();
    assert_eq!(o.live_extents(), 0);
    assert_eq!(o.live_groups(), 0);
    // fixed: 100 extents x 3 groups; sliding: 403 extents (ids 0..=402) x 3 groups; the
    // session window sees one long session per group (events 30 ms apart).
    assert_eq!(firings, 100 * 3 + 403 * 3 + 3);
}

#[test]
fn percentile_watermark_trigger() {
    for (discarding, second) in [(false, 3), (true, 1)] {
        let t = TriggerSpec::percentile_watermark("w", "half", 0.5);
        let t = if discarding { t.discarding() } else { t };
        let mut o = op(
            vec![WindowSpec::fixed("w", "t", 10, count()).min_value(100)],
            vec![t],
        );
        // Extent [100,109]: deadline 100 + ceil(9 * 0.5) = 105.
        feed(&mut o, &[101, 102]);
        assert!(o.on_watermark(104).firings.is_empty());
        assert_eq!(
            fired(&o.on_watermark(105)),
            vec![(Some(100), Some(109), i(2), Watermark)]
        );
        // Another segment before the upper bound: changed and past the deadline, so it fires on
        // arrival.
        let step = feed(&mut o, &[108]);
        assert_eq!(
            fired(&step),
            vec![(Some(100), Some(109), i(second), Segment)]
        );
        assert!(o.on_watermark(106).firings.is_empty());
    }
}

// ----- job completion and recovery -----

#[test]
fn job_completion_fires_only_changed_extents_then_closes_everything() {
    let mut o = op(
        vec![
            WindowSpec::fixed("w", "t", 10, count()),
            WindowSpec::global("g", count()),
        ],
        vec![
            TriggerSpec::segment("w", "every-2", 2),
            TriggerSpec::segment("g", "every-2", 2),
        ],
    );
    // w: t=1,2 -> [0,9]=2 fired; t=11 -> [10,19]=1 changed. g: 3 segments, fired at 2 -> 3.
    let step = feed(&mut o, &[1, 2, 11]);
    assert_eq!(step.firings.len(), 2);
    let step = o.on_job_completed();
    assert_eq!(
        fired(&step),
        vec![
            (Some(10), Some(19), i(1), JobCompleted),
            (None, None, i(3), JobCompleted)
        ]
    );
    assert_eq!(o.watermark(), i64::MAX);
    // Only the global window remains.
    assert_eq!(o.live_extents(), 1);
    let step = feed(&mut o, &[30]);
    assert_eq!(
        step.late[0].reason,
        r#"value 30 of "t" is late: watermark +inf > upper 39 + allowed_lateness 0"#
    );
    // Firing again finds nothing changed.
    assert!(o.on_job_completed().firings.iter().all(|f| f.window == "g"));
}

/// Recovery fires nothing new (the driver re-syncs the last record's firings): an operator
/// rebuilt from the log goes on exactly as the original, discarding refinements included.
#[test]
fn recovery_fires_nothing_and_changes_nothing() {
    let specs = || {
        (
            vec![WindowSpec::fixed("w", "t", 10, count())],
            vec![TriggerSpec::segment("w", "every-2", 2)],
        )
    };
    let (w, t) = specs();
    let mut o = op(w, t);
    // t=1,2: the 2nd segment fires [0,9]=2; t=3: [0,9]=3; t=14: 4th fires [10,19]=1;
    // t=15: [10,19]=2.
    let step = feed(&mut o, &[1, 2, 3, 14, 15]);
    let (w, t) = specs();
    let mut r = op(w, t);
    for tr in &step.transitions {
        r.apply(tr).unwrap();
    }
    // Both changed since they last fired, yet recovery fires neither.
    let before = r.snapshot();
    assert!(r.on_recovered().is_empty());
    assert_eq!(r.snapshot(), before);
    // The next segment fires as it would have without the crash.
    let want = o.on_segment(&seg(16), &Value::Null).unwrap();
    assert_eq!(r.on_segment(&seg(16), &Value::Null).unwrap(), want);
    assert_eq!(r.snapshot(), o.snapshot());
}

// ----- sessions -----

#[test]
fn sessions_merge_within_the_gap() {
    let mut o = op(
        vec![WindowSpec::session("s", "t", 10, collect())],
        vec![TriggerSpec::watermark("s", "close", 0)],
    );
    // 1,5 -> [1,5]; 30 -> [30,30]; 18 -> [18,18] (13 from 5, 12 from 30);
    // 25 -> 7 from 18 and 5 from 30: merges into [18,30].
    feed(&mut o, &[1, 5, 30, 18, 25]);
    let got: Vec<_> = o
        .extents("s", &Value::Null)
        .into_iter()
        .map(|x| (x.lower, x.upper, x.state.to_string()))
        .collect();
    assert_eq!(
        got,
        vec![
            (Some(1), Some(5), r#"[{"t":1},{"t":5}]"#.to_owned()),
            (
                Some(18),
                Some(30),
                r#"[{"t":18},{"t":30},{"t":25}]"#.to_owned()
            ),
        ]
    );
    // Watermark 15 = 5 + gap: an event at 15 could still join [1,5]; nothing fires.
    assert!(o.on_watermark(15).firings.is_empty());
    // Watermark 16 passed 5 + gap 10: [1,5] is closed and fires, once.
    let step = o.on_watermark(16);
    assert_eq!(step.firings.len(), 1);
    assert_eq!(
        (step.firings[0].lower, step.firings[0].upper),
        (Some(1), Some(5))
    );
    // 4 would join the closed [1,5]: late.
    let step = feed(&mut o, &[4]);
    assert_eq!(
        step.late[0].reason,
        r#"value 4 of "t" is late: it would join the session [1, 5], closed since watermark 16 > 5 + timeout_gap 10 + allowed_lateness 0"#
    );
    // 9 is within the gap of the open [18,30], but also of the closed [1,5]: joining would
    // bridge them into one session that has fired already. Late.
    let step = feed(&mut o, &[9]);
    assert_eq!(step.late.len(), 1);
    assert!(step.late[0]
        .reason
        .contains("would join the session [1, 5]"));
    // 17 joins only the open session [18,30], at its start: not late; it becomes [17,30].
    let step = feed(&mut o, &[17]);
    assert!(step.late.is_empty() && step.firings.is_empty());
    assert_eq!(o.extents("s", &Value::Null)[1].lower, Some(17));
    assert_eq!(o.late_count("s"), Some(2));
}

/// DESIGN §4: a session that grows after `last + delay` (where the watermark trigger used to
/// fire) fires once, when the watermark passes `last + timeout_gap + delay`, with its whole
/// state; after that it is final.
#[test]
fn a_session_fires_once_when_it_closes() {
    let mut o = op(
        vec![WindowSpec::session("s", "t", 10, count())],
        vec![TriggerSpec::watermark("s", "closed", 5)],
    );
    feed(&mut o, &[0]);
    // Past 0 + delay 5, but the session can grow until the watermark passes 0 + gap 10.
    assert!(o.on_watermark(6).firings.is_empty());
    assert!(feed(&mut o, &[8]).firings.is_empty());
    assert!(o.on_watermark(14).firings.is_empty());
    assert!(feed(&mut o, &[18]).firings.is_empty());
    // [0,18]: deadline 18 + 10 + 5 passed at 34, not before.
    assert!(o.on_watermark(33).firings.is_empty());
    let step = o.on_watermark(34);
    assert_eq!(fired(&step), vec![(Some(0), Some(18), i(3), Watermark)]);
    // 28 is within the gap of 18, but the session closed at 29: late, and nothing fires.
    let step = feed(&mut o, &[28]);
    assert_eq!(
        step.late[0].reason,
        r#"value 28 of "t" is late: it would join the session [0, 18], closed since watermark 34 > 18 + timeout_gap 10 + allowed_lateness 0"#
    );
    assert!(step.firings.is_empty());
    // Completion has nothing left to fire: the session fired once in all.
    assert!(o.on_job_completed().firings.is_empty());
}

#[test]
fn an_event_at_the_watermark_still_joins_a_session() {
    let mut o = op(
        vec![WindowSpec::session("s", "t", 10, count())],
        vec![TriggerSpec::watermark("s", "closed", 0)],
    );
    feed(&mut o, &[0]);
    // Watermark 10 = 0 + gap: not passed yet.
    assert!(o.on_watermark(10).firings.is_empty());
    let step = feed(&mut o, &[10]);
    assert!(step.late.is_empty() && step.firings.is_empty());
    assert!(o.on_watermark(20).firings.is_empty());
    let step = o.on_watermark(21);
    assert_eq!(fired(&step), vec![(Some(0), Some(10), i(2), Watermark)]);
}

/// A closed session stays (final) until every event that could join it is late by its own
/// time, then is evicted; an event too far behind the watermark to join anything live is late.
#[test]
fn closed_sessions_are_kept_a_gap_longer_then_evicted() {
    let mut o = op(
        vec![WindowSpec::session("s", "t", 10, count())],
        vec![TriggerSpec::watermark("s", "closed", 0)],
    );
    feed(&mut o, &[0]);
    assert_eq!(
        fired(&o.on_watermark(11)),
        vec![(Some(0), Some(0), i(1), Watermark)]
    );
    // 15 is more than the gap from 0 and not behind its own horizon: a new session.
    assert!(feed(&mut o, &[15]).late.is_empty());
    assert_eq!(o.live_extents(), 2);
    // 7 would join the closed [0,0].
    assert_eq!(feed(&mut o, &[7]).late.len(), 1);
    // [0,0] goes once the watermark passes 0 + gap + gap.
    assert_eq!(
        o.on_watermark(20).transitions,
        vec![Transition::Watermark(20)]
    );
    assert_eq!(o.live_extents(), 2);
    let step = o.on_watermark(21);
    assert!(step.firings.is_empty());
    assert_eq!(o.live_extents(), 1);
    // 3 + gap 10 < 21 and no live session starts at or before it: late.
    let step = feed(&mut o, &[3]);
    assert_eq!(
        step.late[0].reason,
        r#"value 3 of "t" is late: watermark 21 > 3 + timeout_gap 10 + allowed_lateness 0"#
    );
    // 16 falls inside the live [15,15]'s reach: it joins.
    assert!(feed(&mut o, &[16]).late.is_empty());
    assert_eq!(o.extents("s", &Value::Null), vec![ext(15, 16, 2)]);
}

/// A watermark delay longer than the gap keeps the session until the trigger's deadline.
#[test]
fn a_long_delay_fires_before_the_session_is_evicted() {
    let mut o = op(
        vec![WindowSpec::session("s", "t", 10, count())],
        vec![TriggerSpec::watermark("s", "late-close", 50)],
    );
    feed(&mut o, &[0, 4]);
    assert!(o.on_watermark(64).firings.is_empty());
    assert_eq!(o.live_extents(), 1);
    let step = o.on_watermark(65);
    assert_eq!(fired(&step), vec![(Some(0), Some(4), i(2), Watermark)]);
    assert_eq!(o.live_extents(), 0);
}

/// A percentile trigger on a session measures the time it is open, `[lower, upper + gap + 1]`:
/// 1 fires when it closes, less fires early and again after a change.
#[test]
fn percentile_triggers_on_sessions_count_the_gap() {
    let mut o = op(
        vec![WindowSpec::session("s", "t", 10, count())],
        vec![
            TriggerSpec::percentile_watermark("s", "half", 0.5),
            TriggerSpec::percentile_watermark("s", "all", 1.0),
        ],
    );
    feed(&mut o, &[0]);
    // [0,0] is open over [0, 11]: half at 6, all at 11.
    assert!(o.on_watermark(5).firings.is_empty());
    assert_eq!(
        fired(&o.on_watermark(6)),
        vec![(Some(0), Some(0), i(1), Watermark)]
    );
    feed(&mut o, &[6]);
    // [0,6] is open over [0, 17]: half at 9, all at 17.
    assert!(o.on_watermark(8).firings.is_empty());
    let step = o.on_watermark(9);
    assert_eq!(step.firings.len(), 1);
    assert_eq!(step.firings[0].trigger.as_str(), "half");
    assert!(o.on_watermark(16).firings.is_empty());
    let step = o.on_watermark(17);
    assert_eq!(fired(&step), vec![(Some(0), Some(6), i(2), Watermark)]);
    assert_eq!(step.firings[0].trigger.as_str(), "all");
}

#[test]
fn sessions_are_per_group() {
    let mut o = op(vec![WindowSpec::session("s", "t", 10, count())], vec![]);
    // a: 1 and 11 are 10 apart (= gap): one session. b: 5 and 40 are 35 apart: two.
    for (t, g) in [(1, "a"), (5, "b"), (11, "a"), (40, "b")] {
        o.on_segment(&seg(t), &g.into()).unwrap();
    }
    assert_eq!(o.extents("s", &"a".into()), vec![ext(1, 11, 2)]);
    assert_eq!(
        o.extents("s", &"b".into()),
        vec![ext(5, 5, 1), ext(40, 40, 1)]
    );
}

// ----- errors, sync lines, transitions -----

#[test]
fn rejected_segments_change_nothing() {
    let mut o = op(
        vec![
            WindowSpec::fixed("w", "t", 10, count()),
            WindowSpec::global("ages", sum("age")),
        ],
        vec![TriggerSpec::segment("w", "each", 1)],
    );
    let before = o.snapshot();
    let e = o.on_segment(&seg(1), &Value::Null).unwrap_err();
    assert_eq!(e.to_string(), r#"window "ages": field "age" is missing"#);
    let e = o
        .on_segment(&seg_with(1, "age", "old"), &Value::Null)
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        r#"window "ages": field "age" is a string, expected a number"#
    );
    let mut m = Map::new();
    m.insert("age", 3);
    let e = o.on_segment(&m, &Value::Null).unwrap_err();
    assert_eq!(e.to_string(), r#"window "w": field "t" is missing"#);
    m.insert("t", true);
    let e = o.on_segment(&m, &Value::Null).unwrap_err();
    assert_eq!(
        e.to_string(),
        r#"window "w": field "t" is a bool, expected epoch milliseconds or an RFC 3339 time"#
    );
    m.insert("t", "noon");
    let e = o.on_segment(&m, &Value::Null).unwrap_err();
    assert_eq!(
        e.to_string(),
        r#"window "w": field "t" is not an RFC 3339 time: "noon""#
    );
    assert_eq!(o.snapshot(), before);
    assert_eq!(o.live_groups(), 0);
}

#[test]
fn invalid_specs_are_rejected() {
    let err = |w: Vec<WindowSpec>, t: Vec<TriggerSpec>| {
        WindowOperator::new(w, t).unwrap_err().to_string()
    };
    assert_eq!(
        err(vec![WindowSpec::sliding("w", "t", 10, 20, count())], vec![]),
        r#"window "w": slide must be positive and at most the range 10, got 20"#
    );
    assert_eq!(
        err(
            vec![WindowSpec::fixed("w", "t", 10, count())],
            vec![TriggerSpec::segment("v", "x", 1)]
        ),
        r#"trigger "x" of window "v": unknown window"#
    );
    assert_eq!(
        err(
            vec![
                WindowSpec::fixed("w", "t", 10, count()),
                WindowSpec::global("w", count())
            ],
            vec![]
        ),
        r#"window "w": duplicate window id"#
    );
    assert_eq!(
        err(
            vec![WindowSpec::fixed("w", "t", 10, count())],
            vec![TriggerSpec::percentile_watermark("w", "p", 1.5)]
        ),
        r#"trigger "p" of window "w": watermark_percentage must be between 0 and 1, got 1.5"#
    );
}

#[test]
fn sync_line_has_the_documented_shape() {
    let mut o = op(
        vec![WindowSpec::fixed("w", "t", 10, count())],
        vec![TriggerSpec::watermark("w", "close", 0)],
    );
    feed(&mut o, &[3]);
    let f = &o.on_watermark(9).firings[0];
    assert_eq!(
        Value::Map(f.to_sync_map()).to_string(),
        r#"{"window":"w","trigger":"close","group":null,"lower":0,"upper":9,"state":1,"event":"watermark"}"#
    );
    let mut o = op(
        vec![WindowSpec::global("g", count())],
        vec![TriggerSpec::segment("g", "s", 1)],
    );
    let step = o.on_segment(&seg(1), &"cand_01".into()).unwrap();
    assert_eq!(
        Value::Map(step.firings[0].to_sync_map()).to_string(),
        r#"{"window":"g","trigger":"s","group":"cand_01","lower":null,"upper":null,"state":1,"event":"segment"}"#
    );
    let o2 = o.on_job_completed();
    assert!(o2.firings.is_empty());
}

#[test]
fn bytes_per_count_transition() {
    let cfg = bincode::config::standard();
    let mut o = op(
        vec![WindowSpec::fixed("per-minute", "t", 60_000, count())],
        vec![TriggerSpec::watermark("per-minute", "close", 0)],
    );
    let step = o
        .on_segment(&seg(1_700_000_000_000), &"cand_01".into())
        .unwrap();
    // The first segment of a group interns it; later ones are one update each.
    assert_eq!(step.transitions.len(), 2);
    let step = o
        .on_segment(&seg(1_700_000_001_000), &"cand_01".into())
        .unwrap();
    assert_eq!(step.transitions.len(), 1);
    let bytes = bincode::serde::encode_to_vec(&step.transitions[0], cfg).unwrap();
    eprintln!("count update transition: {} bytes: {bytes:?}", bytes.len());
    // variant 1 + window 1 + group 1 + extent id 28_333_333 (5) + Int(1) (2).
    assert_eq!(bytes.len(), 10);
    let (back, _): (sardonyx_windowing::Transition, usize) =
        bincode::serde::decode_from_slice(&bytes, cfg).unwrap();
    assert_eq!(back, step.transitions[0]);
    let json = serde_json::to_string(&step.transitions[0]).unwrap();
    assert_eq!(
        json,
        r#"{"Update":{"window":0,"group":0,"extent":28333333,"update":1}}"#
    );
}

/// The log format of every transition variant, byte for byte: bincode (standard config, as the
/// engine logs them) writes the variant index, then the fields in declaration order, without
/// their names. Renaming a field keeps these bytes; reordering fields or variants breaks them.
/// Each field holds a distinct value, so a swap of two fields shows.
#[test]
fn transition_encoding_is_pinned() {
    let cfg = bincode::config::standard();
    let cases: Vec<(Transition, Vec<u8>)> = vec![
        (
            Transition::Group {
                id: 5,
                key: "k".into(),
            },
            // variant 0, id 5, Value::Str (tag 5), length 1, 'k'
            vec![0, 5, 5, 1, b'k'],
        ),
        (
            Transition::Update {
                window: 1,
                group: 2,
                extent: -3,
                update: i(4),
            },
            // variant 1, window 1, group 2, extent zigzag(-3) = 5, Value::Int (tag 2) zigzag(4)
            vec![1, 1, 2, 5, 2, 8],
        ),
        (
            Transition::UpdateRange {
                window: 1,
                group: 2,
                extent: 300,
                count: 3,
                update: Value::Null,
            },
            // extent zigzag(300) = 600 = 0xfb then u16 LE 0x0258; count 3; Value::Null (tag 0)
            vec![2, 1, 2, 0xfb, 0x58, 0x02, 3, 0],
        ),
        (
            Transition::UpdateEach {
                window: 1,
                group: 2,
                extent: 7,
                updates: vec![i(1), Value::Bool(true)],
            },
            // extent zigzag(7) = 14; 2 updates: Int(1) = [2, 2], Bool(true) = [1, 1]
            vec![3, 1, 2, 14, 2, 2, 2, 1, 1],
        ),
        (
            Transition::Fired {
                window: 1,
                trigger: 4,
                group: 2,
                extent: 9,
            },
            vec![4, 1, 4, 2, 18],
        ),
        (
            Transition::Evict {
                window: 1,
                group: 2,
                extent: 9,
            },
            vec![5, 1, 2, 18],
        ),
        (Transition::Watermark(-1), vec![6, 1]),
        (
            Transition::TimerNext {
                window: 1,
                trigger: 4,
                at: 1_000,
            },
            // at zigzag(1000) = 2000 = 0xfb then u16 LE 0x07d0
            vec![7, 1, 4, 0xfb, 0xd0, 0x07],
        ),
        (Transition::Late { window: 3 }, vec![8, 3]),
    ];
    for (t, expected) in cases {
        let bytes = bincode::serde::encode_to_vec(&t, cfg).unwrap();
        assert_eq!(bytes, expected, "{t:?}");
        let (back, n): (Transition, usize) =
            bincode::serde::decode_from_slice(&bytes, cfg).unwrap();
        assert_eq!((back, n), (t, expected.len()));
    }
}

/// `group_key` answers from the operator's own group table: a key is there once interned, gone
/// once its group's last extent is evicted, and its id answers the next group's key once reused.
#[test]
fn group_key_follows_interning_eviction_and_reuse() {
    let mut o = op(
        vec![WindowSpec::fixed("w", "t", 10, count())],
        vec![TriggerSpec::watermark("w", "close", 0)],
    );
    assert_eq!(o.group_key(0), None);
    o.on_segment(&seg(1), &"a".into()).unwrap();
    o.on_segment(&seg(12), &"b".into()).unwrap();
    assert_eq!(o.group_key(0), Some(&"a".into()));
    assert_eq!(o.group_key(1), Some(&"b".into()));
    assert_eq!(o.group_key(2), None);
    assert_eq!(o.group_key(u32::MAX), None);
    // [0,9] closes: group "a" holds nothing else and leaves the table; "b" stays.
    let step = o.on_watermark(10);
    assert!(step.transitions.contains(&Transition::Evict {
        window: 0,
        group: 0,
        extent: 0
    }));
    assert_eq!(o.group_key(0), None);
    assert_eq!(o.group_key(1), Some(&"b".into()));
    // The freed id 0 is reused by the next new group, and now answers its key.
    let step = o.on_segment(&seg(15), &"c".into()).unwrap();
    assert_eq!(
        step.transitions[0],
        Transition::Group {
            id: 0,
            key: "c".into()
        }
    );
    assert_eq!(o.group_key(0), Some(&"c".into()));
    assert_eq!(o.group_key(1), Some(&"b".into()));
    // An operator restored from the snapshot answers the same.
    let mut r = op(
        vec![WindowSpec::fixed("w", "t", 10, count())],
        vec![TriggerSpec::watermark("w", "close", 0)],
    );
    r.restore(o.snapshot()).unwrap();
    assert_eq!(r.group_key(0), Some(&"c".into()));
    assert_eq!(r.group_key(1), Some(&"b".into()));
    assert_eq!(r.group_key(2), None);
}

// ----- found by the golden jobs -----

/// A watermark of +∞ (every input finished) is job completion: firings say `job_completed`.
#[test]
fn an_infinite_watermark_is_job_completion() {
    let mut o = op(
        vec![WindowSpec::fixed("w", "t", 10, count())],
        vec![TriggerSpec::segment("w", "every-5", 5)],
    );
    feed(&mut o, &[1, 12]);
    let step = o.on_watermark(i64::MAX);
    assert_eq!(
        fired(&step),
        vec![
            (Some(0), Some(9), i(1), JobCompleted),
            (Some(10), Some(19), i(1), JobCompleted)
        ]
    );
    assert_eq!(o.live_extents(), 0);
    assert!(o.on_job_completed().firings.is_empty());
}

/// A segment trigger's counter survives the eviction of every extent of its window while the
/// group still holds state in another window (so it does not depend on when the watermark comes).
#[test]
fn segment_counters_survive_eviction_while_the_group_lives() {
    let mut o = op(
        vec![
            WindowSpec::fixed("w", "t", 10, count()),
            WindowSpec::global("all", count()),
        ],
        vec![TriggerSpec::segment("w", "every-2", 2)],
    );
    feed(&mut o, &[1]);
    o.on_watermark(15); // evicts [0,9], the group's only extent of "w"
    assert_eq!(o.live_groups(), 1);
    let step = feed(&mut o, &[16]);
    assert_eq!(fired(&step), vec![(Some(10), Some(19), i(1), Segment)]);
}
