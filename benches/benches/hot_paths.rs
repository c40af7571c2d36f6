//! Criterion micro-benchmarks of the per-event hot paths.
//!
//! `cargo bench -p sardonyx-benches --bench hot_paths` (add `-- <filter>` for one group).
//! Nothing here runs under `cargo test`.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use sardonyx::segment::{
    from_json_slice, from_json_slice_projected, to_bincode, Fields, LineParser,
};
use sardonyx::{Segment, Value};
use sardonyx_windowing::aggregation;
use sardonyx_windowing::extent::Extents;
use sardonyx_windowing::trigger::TriggerSpec;
use sardonyx_windowing::window::WindowSpec;
use sardonyx_windowing::{Transition, WindowOperator};

const LINE: &[u8] =
    br#"{"vote_id": 123456, "voter_id": 4242, "candidate": "cand_03", "event_time": 1700000123456}"#;
const T0: i64 = 1_700_000_000_000;
/// A Nexmark bid as `nexmark-bench` writes it (eight fields, two long strings).
const BID: &[u8] = br#"{"auction":1000,"bidder":1001,"price":73134520,"channel":"channel-7568","url":"https://www.nexmark.com/rswp/bsu/_gzj/item.htm?query=1&channel_id=163053568","date_time":1767225600000,"extra":"tjegpemlelrhcglaovelrtxwcwcintpbwbhwemkngirkduwbqfbwmnrtegvmrittzvxgswwdln","event_id":4}"#;

fn vote(i: u64) -> Segment {
    let mut s = Segment::with_capacity(4);
    s.insert("vote_id", i);
    s.insert("voter_id", (i * 7919) % 50_000);
    s.insert("candidate", format!("cand_{:02}", i % 12));
    s.insert("event_time", T0 + (i as i64) * 14);
    s
}

fn votes(n: u64) -> Vec<(Segment, Value, Value)> {
    (0..n)
        .map(|i| {
            let s = vote(i);
            let c = s.get("candidate").cloned().unwrap_or_default();
            let v = s.get("voter_id").cloned().unwrap_or_default();
            (s, c, v)
        })
        .collect()
}

fn segment_access(c: &mut Criterion) {
    let seg = from_json_slice(LINE).expect("vote line");
    let mut g = c.benchmark_group("segment");
    g.throughput(Throughput::Elements(1));
    g.bench_function("get event_time (4th field)", |b| {
        b.iter(|| {
            black_box(&seg)
                .get(black_box("event_time"))
                .and_then(Value::as_i64)
        })
    });
    g.bench_function("get candidate (3rd field)", |b| {
        b.iter(|| {
            black_box(&seg)
                .get(black_box("candidate"))
                .and_then(Value::as_str)
                .map(str::len)
        })
    });
    g.bench_function("clone", |b| b.iter(|| black_box(&seg).clone()));
    g.bench_function("json parse (vote line)", |b| {
        b.iter(|| from_json_slice(black_box(LINE)))
    });
    // What Nexmark Q7 reads of a bid: three of its eight fields.
    let q7 = Fields::new(["date_time", "event_id", "price"].map(String::from).into());
    g.bench_function("json parse projected (bid line, 3 of 8 fields)", |b| {
        b.iter(|| from_json_slice_projected(black_box(BID), black_box(&q7)))
    });
    // The same through the input's parser, which knows the keys from the line before.
    let mut parser = LineParser::new(q7.clone());
    g.bench_function("line parser (bid line, 3 of 8 fields)", |b| {
        b.iter(|| parser.parse(black_box(BID)))
    });
    g.bench_function("json parse (bid line, all 8 fields)", |b| {
        b.iter(|| from_json_slice(black_box(BID)))
    });
    g.bench_function("bincode encode", |b| b.iter(|| to_bincode(black_box(&seg))));
    g.finish();
}

fn extents(c: &mut Criterion) {
    let fixed = Extents::fixed(0, 60_000);
    let sliding = Extents::sliding(0, 3_600_000, 1_200_000);
    let mut g = c.benchmark_group("extents");
    g.throughput(Throughput::Elements(1));
    g.bench_function("fixed ids", |b| {
        b.iter(|| fixed.ids(black_box(T0 + 123_456)))
    });
    g.bench_function("sliding ids + bounds", |b| {
        b.iter(|| {
            let ids = sliding.ids(black_box(T0 + 123_456)).expect("above m");
            ids.map(|w| sliding.lower(w) ^ sliding.upper(w))
                .sum::<i64>()
        })
    });
    g.finish();
}

fn aggregations(c: &mut Criterion) {
    let seg = from_json_slice(LINE).expect("vote line");
    let count = aggregation::count();
    let sum = aggregation::sum("voter_id");
    let mut g = c.benchmark_group("aggregation");
    g.throughput(Throughput::Elements(1));
    for (name, agg) in [("count", count), ("sum", sum)] {
        g.bench_function(format!("{name} create+apply"), |b| {
            let mut state = agg.init();
            b.iter(|| {
                let u = agg.create_update(&state, black_box(&seg)).expect("update");
                state = agg.apply_update(std::mem::take(&mut state), &u);
            })
        });
    }
    g.finish();
}

fn operator(window: WindowSpec) -> WindowOperator {
    let id = window.id.clone();
    WindowOperator::new(vec![window], vec![TriggerSpec::watermark(&id, "closed", 0)])
        .expect("operator")
}

/// A named way to build an operator, and whether its groups are voters (else candidates).
type Case = (&'static str, Box<dyn Fn() -> WindowOperator>, bool);

fn window_operator(c: &mut Criterion) {
    const N: u64 = 1000;
    let batch = votes(N);
    let mut g = c.benchmark_group("window_operator");
    g.throughput(Throughput::Elements(N));
    let cases: Vec<Case> = vec![
        (
            "on_segment global count",
            Box::new(|| operator(WindowSpec::global("q1", aggregation::count()))),
            false,
        ),
        (
            "on_segment fixed 1 min count",
            Box::new(|| {
                operator(WindowSpec::fixed(
                    "q2",
                    "event_time",
                    60_000,
                    aggregation::count(),
                ))
            }),
            false,
        ),
        (
            "on_segment sliding 1 h / 20 min count",
            Box::new(|| {
                operator(WindowSpec::sliding(
                    "q3",
                    "event_time",
                    3_600_000,
                    1_200_000,
                    aggregation::count(),
                ))
            }),
            false,
        ),
        (
            "on_segment session 5 min count (by voter)",
            Box::new(|| {
                operator(WindowSpec::session(
                    "q4",
                    "event_time",
                    300_000,
                    aggregation::count(),
                ))
            }),
            true,
        ),
    ];
    for (name, make, by_voter) in cases {
        g.bench_function(format!("{name} ×{N}"), |b| {
            b.iter_batched(
                &make,
                |mut op| {
                    for (s, cand, voter) in &batch {
                        let group = if by_voter { voter } else { cand };
                        black_box(op.on_segment(s, group).expect("no error"));
                    }
                    op
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

fn transitions(c: &mut Criterion) {
    let update = Transition::Update {
        window: 0,
        group: 3,
        extent: 28_333_335,
        update: Value::Int(1),
    };
    let range = Transition::UpdateRange {
        window: 0,
        group: 3,
        extent: 1_416_666,
        count: 3,
        update: Value::Int(1),
    };
    let cfg = bincode::config::standard();
    let mut g = c.benchmark_group("transition");
    g.throughput(Throughput::Elements(1));
    g.bench_function("bincode encode Update", |b| {
        b.iter(|| bincode::serde::encode_to_vec(black_box(&update), cfg).expect("encode"))
    });
    g.bench_function("bincode encode UpdateRange", |b| {
        b.iter(|| bincode::serde::encode_to_vec(black_box(&range), cfg).expect("encode"))
    });
    let bytes = bincode::serde::encode_to_vec(&update, cfg).expect("encode");
    g.bench_function("bincode decode Update", |b| {
        b.iter(|| {
            bincode::serde::decode_from_slice::<Transition, _>(black_box(&bytes), cfg)
                .expect("decode")
        })
    });
    g.finish();
}

fn dedup(c: &mut Criterion) {
    const N: i64 = 200_000;
    let key = |i: i64| sardonyx::slot::id_key(&Value::Int(i));
    // A filter of the default shape (buckets of 200 000 ids) holding `n` ids: 0..n.
    let filled = |n: i64| {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut filter =
            sardonyx_state_log::DedupFilter::open(dir.path(), Default::default()).expect("filter");
        for chunk in (0..n).collect::<Vec<_>>().chunks(10_000) {
            filter
                .insert_batch(chunk.iter().map(|i| key(*i)))
                .expect("insert");
        }
        (dir, filter)
    };
    // Keys are built before the clock starts (`id_key` is measured on its own below).
    let seen: Vec<Vec<u8>> = (0..4096).map(|i| key((i * 7919) % N)).collect();
    let new: Vec<Vec<u8>> = (0..65_536).map(|i| key(10_000_000 + i)).collect();
    let mut g = c.benchmark_group("dedup");
    g.throughput(Throughput::Elements(1));
    {
        let (_dir, filter) = filled(N);
        let mut i = 0;
        g.bench_function("contains (seen id)", |b| {
            b.iter(|| {
                i = (i + 1) % seen.len();
                assert!(filter.contains(&seen[i]).expect("contains"));
            })
        });
        let mut j = 0;
        g.bench_function("contains (new id, 3 buckets)", |b| {
            b.iter(|| {
                j = (j + 1) % new.len();
                black_box(filter.contains(&new[j]).expect("contains"))
            })
        });
    }
    {
        // The steady state of a long run: every one of the 10 buckets probed.
        let (_dir, filter) = filled(1_000_000);
        let mut j = 0;
        g.bench_function("contains (new id, 10 buckets)", |b| {
            b.iter(|| {
                j = (j + 1) % new.len();
                black_box(filter.contains(&new[j]).expect("contains"))
            })
        });
        // The engine's way: a whole batch's ids in one call, their cache misses overlapping.
        let mut answers = Vec::new();
        let mut k = 0;
        g.throughput(Throughput::Elements(1000));
        g.bench_function("contains_each (1000 new ids, 10 buckets)", |b| {
            b.iter(|| {
                k = (k + 1000) % (new.len() - 1000);
                let batch = new[k..k + 1000].iter().map(Vec::as_slice);
                filter.contains_each(batch, &mut answers).expect("contains");
                black_box(&answers);
            })
        });
        g.throughput(Throughput::Elements(1));
    }
    {
        // A batch of 1000 new ids into a filter already rotating through full buckets.
        let (_dir, mut filter) = filled(N);
        let mut next = 20_000_000_i64;
        g.throughput(Throughput::Elements(1000));
        g.bench_function("insert_batch (1000 new ids)", |b| {
            b.iter_batched(
                || {
                    next += 1000;
                    (next..next + 1000).map(key).collect::<Vec<_>>()
                },
                |ids| filter.insert_batch(&ids).expect("insert"),
                BatchSize::SmallInput,
            )
        });
        g.throughput(Throughput::Elements(1));
    }
    g.bench_function("id_key", |b| b.iter(|| key(black_box(123_456))));
    g.finish();
}

fn log_append(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let log = rt
        .block_on(sardonyx_state_log::EmbeddedLog::open(
            dir.path().join("log"),
        ))
        .expect("log");
    let log = Arc::new(log);
    let mut g = c.benchmark_group("embedded_log");
    g.sample_size(20);
    let mut seq = 0;
    for size in [64_usize, 16 * 1024] {
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(format!("append {size} B (fsync, one in flight)"), |b| {
            b.iter(|| {
                seq += 1;
                let id = sardonyx_state_log::RequestId::new(1, seq);
                rt.block_on(log.append("bench", id, vec![7; size]))
                    .expect("append")
            })
        });
    }
    g.finish();
    if let Ok(log) = Arc::try_unwrap(log) {
        let _ = rt.block_on(log.close());
    }
}

criterion_group!(
    benches,
    segment_access,
    extents,
    aggregations,
    window_operator,
    transitions,
    dedup,
    log_append
);
criterion_main!(benches);
