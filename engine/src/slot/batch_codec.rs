//! A batch record's bytes written by hand ([`encode_batch_record`]): exactly the bytes of
//! bincode's serde encoding (standard configuration) of `SlotRecord::Batch`, which is what
//! ledgers hold and what recovery decodes. A record holds one transition per applied segment,
//! and going through serde cost ~250 instructions per transition; here the common transitions
//! and values take a few varints, and anything else (group keys, lists, maps, the rarer
//! transitions, the ids and inputs) is appended through serde. Bincode writes a struct as its
//! fields one after another with no framing, so the parts join into the same bytes; the tests
//! compare the two encodings on arbitrary records.

use sardonyx_windowing::{Transition, Value};
use serde::Serialize;

use super::record::{config, BatchRecord};

/// The index of `SlotRecord::Batch` among the record's variants.
const BATCH_VARIANT: u32 = 1;

/// Encodes `SlotRecord::Batch(record)`.
pub fn encode_batch_record(record: &BatchRecord) -> Vec<u8> {
    // Most transitions take 5–12 bytes: one reservation instead of doubling.
    let mut out = Vec::with_capacity(64 + 12 * record.transitions.len() + 4 * record.ids.len());
    put_u64(&mut out, u64::from(BATCH_VARIANT));
    put_u64(&mut out, record.epoch);
    append_serde(&mut out, &record.ids);
    put_u64(&mut out, record.transitions.len() as u64);
    for t in &record.transitions {
        put_transition(&mut out, t);
    }
    append_serde(&mut out, &record.inputs);
    out
}

/// Appends the serde encoding of `value`.
fn append_serde<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    bincode::serde::encode_into_std_write(value, out, config())
        .expect("encoding into memory cannot fail");
}

/// An unsigned integer as bincode's varint: below 251 one byte, else a marker byte (251, 252,
/// 253 for 2, 4, 8 bytes) and the value in little-endian order.
fn put_u64(out: &mut Vec<u8>, v: u64) {
    if v < 251 {
        out.push(v as u8);
    } else if v <= u64::from(u16::MAX) {
        out.push(251);
        out.extend_from_slice(&(v as u16).to_le_bytes());
    } else if v <= u64::from(u32::MAX) {
        out.push(252);
        out.extend_from_slice(&(v as u32).to_le_bytes());
    } else {
        out.push(253);
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// A signed integer as bincode's varint: zigzag, then as unsigned.
fn put_i64(out: &mut Vec<u8>, v: i64) {
    put_u64(out, ((v << 1) ^ (v >> 63)) as u64);
}

/// One transition: the variant's index, then its fields in order. The variants a segment makes
/// (updates) and those a watermark makes (firings, evictions, the watermark) are written here;
/// the others go through serde.
fn put_transition(out: &mut Vec<u8>, t: &Transition) {
    match t {
        Transition::Update {
            window,
            group,
            extent,
            update,
        } => {
            put_u64(out, 1);
            put_u64(out, u64::from(*window));
            put_u64(out, u64::from(*group));
            put_i64(out, *extent);
            put_value(out, update);
        }
        Transition::UpdateRange {
            window,
            group,
            extent,
            count,
            update,
        } => {
            put_u64(out, 2);
            put_u64(out, u64::from(*window));
            put_u64(out, u64::from(*group));
            put_i64(out, *extent);
            put_u64(out, u64::from(*count));
            put_value(out, update);
        }
        Transition::Fired {
            window,
            trigger,
            group,
            extent,
        } => {
            put_u64(out, 4);
            put_u64(out, u64::from(*window));
            put_u64(out, u64::from(*trigger));
            put_u64(out, u64::from(*group));
            put_i64(out, *extent);
        }
        Transition::Evict {
            window,
            group,
            extent,
        } => {
            put_u64(out, 5);
            put_u64(out, u64::from(*window));
            put_u64(out, u64::from(*group));
            put_i64(out, *extent);
        }
        Transition::Watermark(wm) => {
            put_u64(out, 6);
            put_i64(out, *wm);
        }
        other => append_serde(out, other),
    }
}

/// A value in its binary (tagged) form: the tag's index, then the scalar; lists and maps go
/// through serde.
fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Null => put_u64(out, 0),
        Value::Bool(b) => {
            put_u64(out, 1);
            out.push(u8::from(*b));
        }
        Value::Int(i) => {
            put_u64(out, 2);
            put_i64(out, *i);
        }
        Value::UInt(u) => {
            put_u64(out, 3);
            put_u64(out, *u);
        }
        Value::Float(f) => {
            put_u64(out, 4);
            out.extend_from_slice(&f.to_le_bytes());
        }
        Value::Str(s) => {
            put_u64(out, 5);
            put_u64(out, s.len() as u64);
            out.extend_from_slice(s.as_bytes());
        }
        Value::List(_) | Value::Map(_) => append_serde(out, v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slot::record::{decode_record, encode_record, Ids, SlotRecord};
    use proptest::prelude::*;
    use sardonyx_windowing::Map;

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::Int),
            prop_oneof![
                0_i64..300,
                60_000_i64..70_000,
                (1_i64 << 31) - 5..(1_i64 << 33)
            ]
            .prop_map(Value::Int),
            (i64::MAX as u64 + 1..=u64::MAX).prop_map(Value::UInt),
            any::<f64>().prop_map(Value::Float),
            "\\PC{0,30}".prop_map(Value::from),
        ];
        leaf.prop_recursive(2, 12, 3, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(Value::List),
                prop::collection::vec(("[a-z]{1,4}", inner), 0..3)
                    .prop_map(|kv| Value::Map(kv.into_iter().collect::<Map>())),
            ]
        })
    }

    /// Integers around every varint boundary as often as anywhere else.
    fn int() -> impl Strategy<Value = i64> {
        prop_oneof![
            any::<i64>(),
            -300_i64..300,
            prop_oneof![
                Just(125_i64),
                Just(126),
                Just(32_767),
                Just(32_768),
                Just(-32_769),
                Just(i32::MAX as i64),
                Just(i32::MAX as i64 + 1),
                Just(i64::MIN),
                Just(i64::MAX),
            ],
        ]
    }

    fn small() -> impl Strategy<Value = u32> {
        prop_oneof![
            0_u32..300,
            Just(65_535),
            Just(65_536),
            Just(u32::MAX),
            any::<u32>()
        ]
    }

    fn transition() -> impl Strategy<Value = Transition> {
        let window = prop_oneof![0_u16..3, Just(250), Just(251), Just(u16::MAX)];
        prop_oneof![
            (small(), value()).prop_map(|(id, key)| Transition::Group { id, key }),
            (window.clone(), small(), int(), value()).prop_map(
                |(window, group, extent, update)| {
                    Transition::Update {
                        window,
                        group,
                        extent,
                        update,
                    }
                }
            ),
            (window.clone(), small(), int(), small(), value()).prop_map(
                |(window, group, extent, count, update)| Transition::UpdateRange {
                    window,
                    group,
                    extent,
                    count,
                    update,
                }
            ),
            (
                window.clone(),
                small(),
                int(),
                prop::collection::vec(value(), 0..3)
            )
                .prop_map(|(window, group, extent, updates)| Transition::UpdateEach {
                    window,
                    group,
                    extent,
                    updates,
                }),
            (window.clone(), window.clone(), small(), int()).prop_map(
                |(window, trigger, group, extent)| Transition::Fired {
                    window,
                    trigger,
                    group,
                    extent,
                }
            ),
            (window.clone(), small(), int()).prop_map(|(window, group, extent)| {
                Transition::Evict {
                    window,
                    group,
                    extent,
                }
            }),
            int().prop_map(Transition::Watermark),
            (window.clone(), window.clone(), int()).prop_map(|(window, trigger, at)| {
                Transition::TimerNext {
                    window,
                    trigger,
                    at,
                }
            }),
            window.prop_map(|window| Transition::Late { window }),
        ]
    }

    proptest! {
        /// The hand-written bytes are the serde encoding's, and decode back to the record.
        #[test]
        fn a_batch_record_encodes_as_serde_encodes_it(
            epoch in prop_oneof![any::<u64>(), 0_u64..300],
            ids in prop::collection::vec(int(), 0..6),
            labels in prop::collection::vec(any::<u16>(), 0..6),
            transitions in prop::collection::vec(transition(), 0..12),
            inputs in prop::collection::vec((any::<u32>(), any::<u64>()), 0..3),
        ) {
            let values: Vec<Value> = ids.into_iter().map(Value::Int).collect();
            let ids = if labels.len() >= values.len() {
                Ids::from_labelled(&values, &labels[..values.len()])
            } else {
                Ids::from_values(&values)
            };
            let record = BatchRecord { epoch, ids, transitions, inputs };
            let bytes = encode_batch_record(&record);
            let record = SlotRecord::Batch(record);
            prop_assert_eq!(&bytes, &encode_record(&record));
            // A float NaN is not equal to itself: compare the decoded record's bytes instead.
            let back = decode_record(&bytes).map(|r| encode_record(&r));
            prop_assert_eq!(back, Ok(bytes));
        }
    }
}
