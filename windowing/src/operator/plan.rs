//! What a segment does to one window, decided before anything changes: its window key value,
//! whether it is late (and why), and the updates of the extents it falls into. Reads the state
//! only, so a segment rejected by any window changes nothing.

use super::{Extent, WindowOperator};
use crate::error::{a_type, WindowError};
use crate::session;
use crate::value::{Map, Value};
use crate::window::{Units, WindowKind};

/// What a segment does to one window, decided before anything changes.
pub(super) enum Plan {
    Late(String),
    /// Update extents `e, e+1, …` with `u` then `rest` (only sliding windows have a rest).
    Update {
        e: i64,
        u: Value,
        rest: Rest,
    },
}

/// The updates of the extents after the first one a segment falls into.
pub(super) enum Rest {
    /// This many more extents, each updated with the first one's update (the aggregation's
    /// update ignores the state).
    Same(u32),
    /// One update for each further extent.
    Each(Vec<Value>),
}

impl WindowOperator {
    /// The window key value of `segment` for window `w` (`None` for global windows).
    fn key_value(&self, w: usize, segment: &Map) -> Result<Option<i64>, WindowError> {
        let spec = &self.windows[w];
        if spec.kind == WindowKind::Global {
            return Ok(None);
        }
        let key = spec.window_key.as_deref().unwrap_or_default();
        let err = |message: String| WindowError::WindowKey {
            window: spec.id.clone(),
            message,
        };
        let Some(v) = segment.get(key) else {
            return Err(err(format!("field {key:?} is missing")));
        };
        match spec.units {
            Units::Millis => match v {
                Value::Str(s) => v
                    .as_event_time()
                    .map(Some)
                    .ok_or_else(|| err(format!("field {key:?} is not an RFC 3339 time: {s:?}"))),
                _ => v.as_event_time().map(Some).ok_or_else(|| {
                    err(format!(
                        "field {key:?} is {}, expected epoch milliseconds or an RFC 3339 time",
                        a_type(v.type_name())
                    ))
                }),
            },
            Units::Elements => v.as_i64().map(Some).ok_or_else(|| {
                err(format!(
                    "field {key:?} is {}, expected an integer",
                    a_type(v.type_name())
                ))
            }),
        }
    }

    pub(super) fn plan(
        &self,
        w: usize,
        segment: &Map,
        g: Option<u32>,
    ) -> Result<Plan, WindowError> {
        let spec = &self.windows[w];
        let v = self.key_value(w, segment)?;
        let wm = self.state.watermark;
        let gs = g.and_then(|g| self.state.windows[w].groups.get(&g));
        let agg = &spec.aggregation;
        // An aggregation whose update ignores the state is not shown one: no extent is looked
        // up (or sessions merged) to make it.
        let ignores_state = agg.update_ignores_state();
        let create = |state: &Value| {
            agg.create_update(state, segment)
                .map_err(|source| WindowError::Aggregation {
                    window: spec.id.clone(),
                    source,
                })
        };
        let key = spec.window_key.as_deref().unwrap_or_default();
        if let Some(v) = v {
            if v < spec.min_value {
                return Ok(Plan::Late(format!(
                    "value {v} of {key:?} is below min_value {}",
                    spec.min_value
                )));
            }
        }
        match spec.kind {
            WindowKind::Global => {
                let u = if ignores_state {
                    create(&Value::Null)?
                } else {
                    match gs.and_then(|gs| gs.extents.get(&0)) {
                        Some(x) => create(&x.state)?,
                        None => create(&agg.init())?,
                    }
                };
                Ok(Plan::Update {
                    e: 0,
                    u,
                    rest: Rest::Same(0),
                })
            }
            WindowKind::Session { gap } => {
                let t = v.expect("sessions have a window key");
                let lateness = spec.allowed_lateness;
                let touching: Vec<(i64, &Extent)> = gs.map_or_else(Vec::new, |gs| {
                    session::touching(&gs.extents, |x| x.upper, t, gap)
                        .into_iter()
                        .map(|k| (k, gs.extents.get(&k).expect("touching keys exist")))
                        .collect()
                });
                let past = |upper: i64| wm > upper.saturating_add(gap).saturating_add(lateness);
                // A session past its lateness horizon is final: nothing joins it.
                if let Some((lower, x)) = touching.iter().find(|(_, x)| past(x.upper)) {
                    return Ok(Plan::Late(format!(
                        "value {t} of {key:?} is late: it would join the session [{lower}, {}], closed since watermark {} > {} + timeout_gap {gap} + allowed_lateness {lateness}",
                        x.upper,
                        fmt_wm(wm),
                        x.upper
                    )));
                }
                // Alone, or extending a session to the left, an event whose own session would
                // be past its horizon might belong to a session already evicted.
                if past(t) && !touching.iter().any(|(lower, _)| *lower <= t) {
                    return Ok(Plan::Late(format!(
                        "value {t} of {key:?} is late: watermark {} > {t} + timeout_gap {gap} + allowed_lateness {lateness}",
                        fmt_wm(wm)
                    )));
                }
                // Only an event bridging two sessions pays for a merged copy of their states.
                let u = match touching.as_slice() {
                    _ if ignores_state => create(&Value::Null)?,
                    [] => create(&agg.init())?,
                    [(_, x)] => create(&x.state)?,
                    [(_, x), rest @ ..] => {
                        create(&rest.iter().fold(x.state.clone(), |acc, (_, y)| {
                            agg.merge(acc, y.state.clone())
                        }))?
                    }
                };
                Ok(Plan::Update {
                    e: t,
                    u,
                    rest: Rest::Same(0),
                })
            }
            WindowKind::Fixed { .. } | WindowKind::Sliding { .. } => {
                let v = v.expect("fixed and sliding windows have a window key");
                let ext = spec.extents().expect("numbered extents");
                let ids = ext.ids(v).expect("v >= min_value");
                // The live extents are a suffix of `ids` (uppers grow with ids): no list of
                // them, so a fixed window's segment allocates nothing here.
                let mut live =
                    ids.filter(|&id| wm <= ext.upper(id).saturating_add(spec.allowed_lateness));
                let Some(first) = live.next() else {
                    let upper = ext.last_upper(v).unwrap_or(v);
                    return Ok(Plan::Late(format!(
                        "value {v} of {key:?} is late: watermark {} > upper {upper} + allowed_lateness {}",
                        fmt_wm(wm),
                        spec.allowed_lateness
                    )));
                };
                let update = |id: i64| match gs.and_then(|gs| gs.extents.get(&id)) {
                    Some(x) => create(&x.state),
                    None => create(&agg.init()),
                };
                let (u, rest) = if ignores_state {
                    // The others' updates would be `u` again: made once, counted.
                    (create(&Value::Null)?, Rest::Same(live.count() as u32))
                } else {
                    let u = update(first)?;
                    (
                        u,
                        Rest::Each(live.map(update).collect::<Result<_, WindowError>>()?),
                    )
                };
                Ok(Plan::Update { e: first, u, rest })
            }
        }
    }
}

/// A watermark in a message (`+inf` for `i64::MAX`).
fn fmt_wm(wm: i64) -> String {
    if wm == i64::MAX {
        "+inf".to_owned()
    } else {
        wm.to_string()
    }
}
