//! Extent ids and bounds, and the watermark tracker, with values worked out by hand.

use sardonyx_windowing::session::sessions_of;
use sardonyx_windowing::{Extents, WatermarkTracker};

#[test]
fn design_example_m0_r20_s5() {
    let x = Extents::sliding(0, 20, 5);
    for v in 0..=4 {
        assert_eq!(x.ids(v), Some(0..=3), "v = {v}");
    }
    // lower(w) = max(0, 5(w+1) - 20), upper(w) = 5(w+1) - 1.
    let bounds: Vec<(i64, i64)> = (0..=5).map(|w| (x.lower(w), x.upper(w))).collect();
    assert_eq!(
        bounds,
        vec![(0, 4), (0, 9), (0, 14), (0, 19), (5, 24), (10, 29)]
    );
    assert_eq!(x.ids(5), Some(1..=4));
    assert_eq!(x.ids(24), Some(4..=7));
    assert_eq!(x.ids(25), Some(5..=8));
    assert_eq!(x.last_upper(24), Some(39));
}

#[test]
fn fixed_extents() {
    let x = Extents::fixed(0, 60_000);
    assert_eq!(x.ids(0), Some(0..=0));
    assert_eq!(x.ids(59_999), Some(0..=0));
    assert_eq!(x.ids(60_000), Some(1..=1));
    assert_eq!((x.lower(1), x.upper(1)), (60_000, 119_999));
    let m = Extents::fixed(7, 10);
    assert_eq!(m.ids(6), None);
    assert_eq!(m.ids(7), Some(0..=0));
    assert_eq!(m.ids(17), Some(1..=1));
    assert_eq!((m.lower(1), m.upper(1)), (17, 26));
}

#[test]
fn sliding_with_range_not_a_multiple_of_slide() {
    // r=7, s=5: extent w = [5w-2, 5w+4] clipped at 0. 0 is only in extent 0 = [0,4];
    // 3 is in extents 0 = [0,4] and 1 = [3,9].
    let x = Extents::sliding(0, 7, 5);
    assert_eq!(x.ids(0), Some(0..=0));
    assert_eq!(x.ids(3), Some(0..=1));
    assert_eq!((x.lower(1), x.upper(1)), (3, 9));
}

#[test]
fn reference_sessions() {
    assert_eq!(sessions_of(&[30, 1, 25, 5, 18], 10), vec![(1, 5), (18, 30)]);
    assert_eq!(sessions_of(&[0, 10, 21], 10), vec![(0, 10), (21, 21)]);
    assert_eq!(sessions_of(&[], 10), vec![]);
}

#[test]
fn watermark_is_least_over_inputs() {
    let mut w: WatermarkTracker<&str> = WatermarkTracker::new(5, None);
    w.add_input("a", 0);
    w.add_input("b", 0);
    assert_eq!(w.watermark(0), i64::MIN); // nothing seen yet
    w.observe("a", 100, 1);
    assert_eq!(w.watermark(1), i64::MIN); // b holds it back
    w.observe("b", 60, 2);
    assert_eq!(w.watermark(2), 55); // min(100, 60) - 5
    w.observe("b", 40, 3); // older event: b's max stays 60
    assert_eq!(w.input_watermark(&"b"), Some(55));
    w.observe("b", 200, 4);
    assert_eq!(w.watermark(4), 95); // min(100, 200) - 5
    w.finish("a");
    assert_eq!(w.watermark(5), 195); // a no longer holds it back
    w.finish("b");
    assert_eq!(w.watermark(6), i64::MAX);
}

#[test]
fn idle_inputs_stop_holding_the_watermark_back() {
    let mut w: WatermarkTracker = WatermarkTracker::new(0, Some(1_000));
    w.add_input(1, 0);
    w.add_input(2, 0);
    w.observe(1, 500, 100);
    assert_eq!(w.watermark(999), i64::MIN); // input 2: not idle yet, nothing seen
    assert_eq!(w.watermark(1_000), 500); // input 2 idle since 0
    w.observe(1, 700, 1_500);
    assert_eq!(w.watermark(1_600), 700);
    // Input 2 wakes up with older data: it holds the watermark again, but it never goes back.
    w.observe(2, 600, 1_700);
    assert_eq!(w.watermark(1_700), 700);
    w.observe(1, 900, 1_800);
    assert_eq!(w.watermark(1_800), 700); // min(900, 600) = 600, kept at 700
    w.observe(2, 800, 1_900);
    assert_eq!(w.watermark(1_900), 800);
    // Both idle: the greatest input watermark (900), not +inf.
    assert_eq!(w.watermark(5_000), 900);
    assert_eq!(w.current(), 900);
}
