//! Which fields of an input's records a job reads (issue 21, "a compiled per-event path"):
//! derived from the job alone, so an input parses only those fields of a JSON line and the
//! segments that flow are smaller to route, hash, serialize and hold.
//!
//! The fields are those of the input's watermark key, and, for every task its segments reach,
//! its group key, its uniqueness key, and its windows' window key and aggregated field. Whole
//! segments are needed — no projection — as soon as any reached task could look at a field the
//! job does not name: a function other than `sardonyx/identity`, a `group_by_fn`, a flow
//! condition, a lifecycle, a punctuation trigger's predicate, an aggregation other than the
//! built-in `count`, `sum`, `min`, `max` and `average`, a window's late task, or an output
//! other than `sardonyx/null`. An input's `"project": false` parameter turns it off.
//!
//! With a projection, a segment rejected downstream (say, its window key is not a number) goes
//! to the error path with the fields the job reads, not the whole line.

use std::collections::BTreeSet;

use crate::job::{GroupKey, Job, TaskKind, TriggerOn};

/// The builtin aggregations whose state depends only on their field (or none).
const FIELD_AGGREGATIONS: [&str; 5] = ["count", "sum", "min", "max", "average"];

/// The fields of input `input`'s records that `job` reads, sorted, or `None` if some task its
/// segments reach may read any field (see the module doc).
pub fn input_fields(job: &Job, input: &str) -> Option<Vec<String>> {
    let spec = job.task(input)?;
    if spec.kind != TaskKind::Input
        || spec.params.get("project") == Some(&crate::segment::Value::Bool(false))
        || !job.flow_conditions.is_empty()
    {
        return None;
    }
    let mut fields = BTreeSet::new();
    if let Some(w) = &spec.watermark {
        fields.insert(w.key.clone());
    }
    // Every task downstream of the input, the input first.
    let mut reached = vec![input.to_owned()];
    let mut next = 0;
    while next < reached.len() {
        let name = reached[next].clone();
        next += 1;
        for d in job.downstream(&name) {
            if !reached.iter().any(|r| r == d) {
                reached.push(d.to_owned());
            }
        }
    }
    for name in &reached {
        let t = job.task(name)?;
        if job
            .lifecycles
            .iter()
            .any(|l| l.task == *name || l.task == "all")
        {
            return None;
        }
        match t.kind {
            TaskKind::Input if name != input => return None,
            TaskKind::Input => {}
            TaskKind::Function => {
                if t.function.as_deref() != Some("sardonyx/identity") || t.group_by_fn.is_some() {
                    return None;
                }
            }
            TaskKind::Output => {
                if t.plugin.as_deref() != Some("sardonyx/null") {
                    return None;
                }
            }
        }
        match &t.group_by_key {
            Some(GroupKey::One(f)) => {
                fields.insert(f.clone());
            }
            Some(GroupKey::Many(fs)) => fields.extend(fs.iter().cloned()),
            None => {}
        }
        if let Some(u) = &t.uniqueness_key {
            fields.insert(u.clone());
        }
        for w in job.windows_of(name) {
            if w.late.is_some() || !FIELD_AGGREGATIONS.contains(&w.aggregation.name()) {
                return None;
            }
            fields.extend(w.window_key.iter().cloned());
            fields.extend(w.aggregation.field().map(str::to_owned));
            let punctuated = job.triggers.iter().any(|tr| {
                tr.window == w.id && (tr.on == TriggerOn::Punctuation || tr.pred.is_some())
            });
            if punctuated {
                return None;
            }
        }
    }
    Some(fields.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(json: &str) -> Job {
        Job::from_json_str(json).unwrap()
    }

    const WINDOWED: &str = r#"{
      "workflow": [["in", "w"], ["w", "out"]],
      "catalog": [
        {"name": "in", "type": "input", "plugin": "sardonyx/jsonl",
         "watermark": {"key": "t", "max_out_of_order": [4, "seconds"]}},
        {"name": "w", "type": "function", "fn": "sardonyx/identity",
         "group_by_key": "auction", "uniqueness_key": "id"},
        {"name": "out", "type": "output", "plugin": "sardonyx/null"}
      ],
      "windows": [{"id": "m", "task": "w", "type": "fixed", "window_key": "t",
                   "range": [10, "seconds"], "aggregation": ["max", "price"]}],
      "triggers": [{"window": "m", "id": "c", "on": "watermark",
                    "sync": "sardonyx/jsonl", "params": {"path": "x"}}]
    }"#;

    #[test]
    fn a_windowed_job_reads_its_keys_and_aggregated_field() {
        let fields = input_fields(&job(WINDOWED), "in");
        assert_eq!(fields.unwrap(), ["auction", "id", "price", "t"]);
    }

    #[test]
    fn anything_that_may_read_any_field_needs_whole_segments() {
        let cases = [
            (
                r#""plugin": "sardonyx/null"}"#,
                r#""plugin": "sardonyx/jsonl"}"#,
            ),
            (r#""fn": "sardonyx/identity","#, r#""fn": "test/enrich","#),
            (r#"["max", "price"]"#, r#""collect""#),
            (
                r#""on": "watermark","#,
                r#""on": "punctuation", "pred": "p","#,
            ),
            (
                r#""plugin": "sardonyx/jsonl","#,
                r#""plugin": "sardonyx/jsonl", "params": {"project": false},"#,
            ),
        ];
        for (from, to) in cases {
            assert!(WINDOWED.contains(from), "{from}");
            let changed = WINDOWED.replacen(from, to, 1);
            assert_eq!(input_fields(&job(&changed), "in"), None, "{to}");
        }
    }
}
