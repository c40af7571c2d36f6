//! The segment events ([`WindowOperator::on_segment`] and its batch forms): plan every window,
//! then carry the plans out as transitions (interning the group when it is new, late counts,
//! updates) and evaluate the segment's triggers.

use super::plan::{Plan, Rest};
use super::transition::Transition;
use super::{Late, Step, WindowOperator};
use crate::error::WindowError;
use crate::session;
use crate::value::{Map, Value};
use crate::window::WindowKind;

impl WindowOperator {
    /// A new segment of `group` (`Value::Null` without grouping). On error (a bad window key, or
    /// an aggregation rejecting the segment) nothing changes and the segment belongs on the error
    /// path with the error's message.
    pub fn on_segment(&mut self, segment: &Map, group: &Value) -> Result<Step, WindowError> {
        let mut step = Step::default();
        self.on_segment_into(segment, group, &mut step)?;
        Ok(step)
    }

    /// [`WindowOperator::on_segment`], appending to `step` (so a batch reuses one `Step`). On
    /// error nothing changes and `step` is left as it was.
    pub fn on_segment_into(
        &mut self,
        segment: &Map,
        group: &Value,
        step: &mut Step,
    ) -> Result<(), WindowError> {
        let known = self.group_id(group);
        // Plan every window before changing anything, so an error changes nothing. One window
        // (the common case) needs no list of plans.
        if self.windows.len() == 1 {
            let plan = self.plan(0, segment, known)?;
            self.carry_out(step, 0, plan, segment, group, known);
            return Ok(());
        }
        let plans = (0..self.windows.len())
            .map(|w| self.plan(w, segment, known))
            .collect::<Result<Vec<Plan>, WindowError>>()?;
        let mut gid = known;
        for (w, plan) in plans.into_iter().enumerate() {
            gid = self.carry_out(step, w, plan, segment, group, gid);
        }
        Ok(())
    }

    /// Carries out `plan` for window `w`; `gid` is the group's id if it is interned. Returns the
    /// group's id afterwards.
    fn carry_out(
        &mut self,
        step: &mut Step,
        w: usize,
        plan: Plan,
        segment: &Map,
        group: &Value,
        gid: Option<u32>,
    ) -> Option<u32> {
        match plan {
            Plan::Late(reason) => {
                self.apply_and_record(step, Transition::Late { window: w as u16 });
                step.late.push(Late {
                    window: self.windows[w].id.clone(),
                    segment: segment.clone(),
                    reason,
                });
                gid
            }
            Plan::Update { e, u, rest } => {
                let g = match gid {
                    Some(g) => g,
                    None => {
                        let id = self.next_group_id();
                        self.apply_and_record(
                            step,
                            Transition::Group {
                                id,
                                key: group.clone(),
                            },
                        );
                        id
                    }
                };
                let w16 = w as u16;
                // Updates all equal to the first are one range, however they were planned.
                let rest = match rest {
                    Rest::Each(r) if r.iter().all(|x| *x == u) => Rest::Same(r.len() as u32),
                    other => other,
                };
                let (n, t) = match rest {
                    Rest::Same(0) => (
                        1,
                        Transition::Update {
                            window: w16,
                            group: g,
                            extent: e,
                            update: u,
                        },
                    ),
                    Rest::Same(more) => (
                        1 + more as usize,
                        Transition::UpdateRange {
                            window: w16,
                            group: g,
                            extent: e,
                            count: 1 + more,
                            update: u,
                        },
                    ),
                    Rest::Each(mut rest) => {
                        rest.insert(0, u);
                        (
                            rest.len(),
                            Transition::UpdateEach {
                                window: w16,
                                group: g,
                                extent: e,
                                updates: rest,
                            },
                        )
                    }
                };
                self.apply_and_record(step, t);
                let touched = match self.windows[w].kind {
                    WindowKind::Session { .. } => self.state.windows[w]
                        .groups
                        .get(&g)
                        .and_then(|gs| session::containing(&gs.extents, |x| x.upper, e))
                        .map_or(0..0, |lo| lo..lo + 1),
                    _ => e..e + n as i64,
                };
                self.segment_triggers(step, w, g, touched, segment);
                Some(g)
            }
        }
    }

    /// Several segments, each with its group. Returns the combined step and the segments that
    /// were rejected (by index, with the error); a rejected segment changes nothing.
    pub fn on_batch<'a>(
        &mut self,
        batch: impl IntoIterator<Item = (&'a Map, &'a Value)>,
    ) -> (Step, Vec<(usize, WindowError)>) {
        let mut step = Step::default();
        let mut errors = Vec::new();
        for (i, (segment, group)) in batch.into_iter().enumerate() {
            if let Err(e) = self.on_segment_into(segment, group, &mut step) {
                errors.push((i, e));
            }
        }
        (step, errors)
    }
}
