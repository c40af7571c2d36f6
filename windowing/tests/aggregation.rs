//! Built-in aggregations, with expected states worked out by hand.

use sardonyx_windowing::aggregation::{
    average, collect, collect_by_key, count, max, max_with_init, min, min_with_init, sum,
};
use sardonyx_windowing::{Aggregation, AggregationError, Map, Value};

fn seg(fields: &[(&str, Value)]) -> Map {
    let mut m = Map::new();
    for (k, v) in fields {
        m.insert(*k, v.clone());
    }
    m
}

fn fold(agg: &dyn Aggregation, segments: &[Map]) -> Value {
    let mut state = agg.init();
    for s in segments {
        let u = agg.create_update(&state, s).unwrap();
        state = agg.apply_update(state, &u);
    }
    state
}

fn ages(ages: &[Value]) -> Vec<Map> {
    ages.iter().map(|a| seg(&[("age", a.clone())])).collect()
}

#[test]
fn count_counts() {
    let c = count();
    assert_eq!(c.init(), Value::Int(0));
    assert_eq!(
        fold(&*c, &ages(&[1.into(), 2.into(), 3.into()])),
        Value::Int(3)
    );
    assert_eq!(c.merge(Value::Int(2), Value::Int(5)), Value::Int(7));
}

#[test]
fn sum_keeps_integers_and_goes_float_on_floats() {
    let s = sum("age");
    assert_eq!(s.init(), Value::Int(0));
    assert_eq!(
        fold(&*s, &ages(&[10.into(), 20.into(), 12.into()])),
        Value::Int(42)
    );
    assert_eq!(
        fold(&*s, &ages(&[10.into(), 0.5.into(), 2.into()])),
        Value::Float(12.5)
    );
    assert_eq!(
        s.merge(Value::Int(4), Value::Float(0.25)),
        Value::Float(4.25)
    );
}

#[test]
fn numeric_field_errors_are_exact() {
    let s = sum("age");
    let missing = s.create_update(&s.init(), &seg(&[("name", "x".into())]));
    assert_eq!(
        missing,
        Err(AggregationError::MissingField {
            field: "age".into()
        })
    );
    assert_eq!(
        missing.unwrap_err().to_string(),
        r#"field "age" is missing"#
    );
    for agg in [sum("age"), min("age"), max("age"), average("age")] {
        let err = agg
            .create_update(&agg.init(), &seg(&[("age", "old".into())]))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"field "age" is a string, expected a number"#
        );
        let err = agg
            .create_update(&agg.init(), &seg(&[("age", Value::Null)]))
            .unwrap_err();
        assert_eq!(err.to_string(), r#"field "age" is null, expected a number"#);
    }
}

#[test]
fn min_and_max_are_null_until_the_first_value() {
    let lo = min("age");
    let hi = max("age");
    assert_eq!(lo.init(), Value::Null);
    assert_eq!(hi.init(), Value::Null);
    let xs = ages(&[7.into(), 3.into(), 9.into(), 3.5.into()]);
    assert_eq!(fold(&*lo, &xs), Value::Int(3));
    assert_eq!(fold(&*hi, &xs), Value::Int(9));
    assert_eq!(lo.merge(Value::Null, Value::Int(4)), Value::Int(4));
    assert_eq!(hi.merge(Value::Int(4), Value::Null), Value::Int(4));
    assert_eq!(
        lo.merge(Value::Int(4), Value::Float(2.5)),
        Value::Float(2.5)
    );
}

#[test]
fn min_and_max_with_init() {
    let lo = min_with_init("age", 5_i64);
    let hi = max_with_init("age", 100_i64);
    let xs = ages(&[7.into(), 6.into()]);
    assert_eq!(fold(&*lo, &xs), Value::Int(5));
    assert_eq!(fold(&*hi, &xs), Value::Int(100));
    assert_eq!(fold(&*lo, &ages(&[(-1).into()])), Value::Int(-1));
}

#[test]
fn average_keeps_n_sum_and_average() {
    let a = average("age");
    let init = a.init();
    assert_eq!(init.to_string(), r#"{"n":0,"sum":0,"average":null}"#);
    let state = fold(&*a, &ages(&[10.into(), 20.into(), 40.into()]));
    // n = 3, sum = 70, average = 70 / 3.
    let mut expected = Map::new();
    expected.insert("n", 3_i64);
    expected.insert("sum", 70_i64);
    expected.insert("average", 70.0 / 3.0);
    assert_eq!(state, Value::Map(expected));
    let other = fold(&*a, &ages(&[30.into()]));
    assert_eq!(
        a.merge(state, other).to_string(),
        r#"{"n":4,"sum":100,"average":25.0}"#
    );
}

#[test]
fn collect_keeps_arrival_order() {
    let c = collect();
    let xs = ages(&[3.into(), 1.into(), 2.into()]);
    assert_eq!(
        fold(&*c, &xs).to_string(),
        r#"[{"age":3},{"age":1},{"age":2}]"#
    );
    assert_eq!(
        c.merge(fold(&*c, &xs[..1]), fold(&*c, &xs[1..])),
        fold(&*c, &xs)
    );
}

#[test]
fn collect_by_key_groups_by_field() {
    let c = collect_by_key("team");
    let xs = vec![
        seg(&[("team", "red".into()), ("p", 1.into())]),
        seg(&[("team", "blue".into()), ("p", 2.into())]),
        seg(&[("team", "red".into()), ("p", 3.into())]),
        seg(&[("team", 7.into()), ("p", 4.into())]),
    ];
    let state = fold(&*c, &xs);
    assert_eq!(
        state.to_string(),
        r#"{"red":[{"team":"red","p":1},{"team":"red","p":3}],"blue":[{"team":"blue","p":2}],"7":[{"team":7,"p":4}]}"#
    );
    assert_eq!(c.merge(fold(&*c, &xs[..2]), fold(&*c, &xs[2..])), state);
    let err = c
        .create_update(&c.init(), &seg(&[("p", 1.into())]))
        .unwrap_err();
    assert_eq!(err.to_string(), r#"field "team" is missing"#);
}

#[test]
fn builtin_names() {
    use sardonyx_windowing::aggregation::builtin;
    assert_eq!(builtin("count", None).unwrap().name(), "count");
    assert_eq!(builtin("sum", Some("x")).unwrap().name(), "sum");
    assert_eq!(builtin("max", Some("x")).unwrap().name(), "max");
    assert!(builtin("sum", None).is_none());
    assert!(builtin("median", Some("x")).is_none());
}
