//! The end of a job and a slot's recovery: job completion fires every changed extent (in
//! bounded steps when asked, tracked by a [`Completion`]), then moves the watermark to +∞ and
//! evicts; recovery fires nothing (see the [operator docs](super)).

use super::transition::Transition;
use super::{Step, WindowOperator};
use crate::trigger::FireEvent;

/// How far a job completion in bounded steps ([`WindowOperator::on_job_completed_into`]) has
/// gone: the window and trigger whose changed extents are firing, and the next group.
#[derive(Debug, Default)]
pub struct Completion {
    w: usize,
    tr: usize,
    /// Window `w`'s group ids ordered by group value (the firing order), once listed.
    groups: Option<Vec<u32>>,
    /// Index in `groups` of the next group to fire.
    next: usize,
    done: bool,
}

impl Completion {
    /// True once the completion is done.
    pub fn is_done(&self) -> bool {
        self.done
    }
}

impl WindowOperator {
    /// The job's inputs are exhausted: every trigger fires every extent and group changed since
    /// it last fired it (event `job_completed`); then the watermark becomes +∞ and all
    /// non-global extents are evicted.
    pub fn on_job_completed(&mut self) -> Step {
        let mut step = Step::default();
        self.on_job_completed_into(&mut Completion::default(), &mut step, usize::MAX);
        step
    }

    /// [`WindowOperator::on_job_completed`] in bounded steps, so that a job with many open
    /// windows does not hold all their final firings at once: appends to `step` the firings of
    /// whole groups until at least `max_firings` (at least 1) were appended, or completion is
    /// done. Returns true once it is done (every changed extent fired, the watermark +∞ and
    /// the extents evicted); until then call it again with the same `completion` and no other
    /// event in between. The steps of all calls, concatenated, are those of
    /// [`WindowOperator::on_job_completed`]. Each step can be logged and replayed on its own: a
    /// completion cut short by a crash fires what is left when the job is completed again.
    pub fn on_job_completed_into(
        &mut self,
        completion: &mut Completion,
        step: &mut Step,
        max_firings: usize,
    ) -> bool {
        if completion.done {
            return true;
        }
        let start = step.firings.len();
        let max_firings = max_firings.max(1);
        while completion.w < self.windows.len() {
            let w = completion.w;
            let groups = completion
                .groups
                .take()
                .unwrap_or_else(|| self.sorted_groups(w));
            while completion.tr < self.triggers[w].len() {
                let tr = completion.tr;
                while let Some(&g) = groups.get(completion.next) {
                    if step.firings.len() - start >= max_firings {
                        completion.groups = Some(groups);
                        return false;
                    }
                    completion.next += 1;
                    for e in self.extent_keys(w, g) {
                        if self.changed(w, tr, g, e) {
                            self.fire(step, w, tr, g, e, FireEvent::JobCompleted);
                        }
                    }
                }
                completion.next = 0;
                completion.tr += 1;
            }
            completion.tr = 0;
            completion.w += 1;
        }
        if self.state.watermark < i64::MAX {
            self.apply_and_record(step, Transition::Watermark(i64::MAX));
        }
        for w in 0..self.windows.len() {
            self.advance(step, w, FireEvent::JobCompleted, false);
        }
        completion.done = true;
        true
    }

    /// The slot was recovered (state rebuilt from the log). Fires nothing and changes nothing
    /// (see the module docs): the step is empty. Kept as the event a driver reports, so that a
    /// trigger needing it later has its place.
    pub fn on_recovered(&mut self) -> Step {
        Step::default()
    }
}
