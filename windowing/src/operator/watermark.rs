//! The watermark event: the task watermark reaching the operator
//! ([`WindowOperator::on_watermark`]). It moves the operator's watermark and lets every window
//! advance (watermark triggers, final firings, eviction); +∞ is job completion instead. Apart
//! from firing and completion because it leads to both. (Tracking a task's watermark over its
//! inputs is [`crate::watermark`].)

use super::transition::Transition;
use super::{Step, WindowOperator};
use crate::trigger::FireEvent;

impl WindowOperator {
    /// The task watermark advanced to `wm`: watermark triggers fire, then extents past their
    /// horizon get their final firings and are evicted. A watermark not above the current one
    /// does nothing. A watermark of +∞ (`i64::MAX`: every input finished) is job completion and
    /// does what [`WindowOperator::on_job_completed`] does.
    pub fn on_watermark(&mut self, wm: i64) -> Step {
        let mut step = Step::default();
        self.on_watermark_into(wm, &mut step);
        step
    }

    /// [`WindowOperator::on_watermark`], appending to `step` (a batch's step takes its
    /// watermark's transitions and firings without another vector to copy them from).
    pub fn on_watermark_into(&mut self, wm: i64, step: &mut Step) {
        if wm <= self.state.watermark {
            return;
        }
        if wm == i64::MAX {
            step.extend(self.on_job_completed());
            return;
        }
        self.apply_and_record(step, Transition::Watermark(wm));
        for w in 0..self.windows.len() {
            self.advance(step, w, FireEvent::Watermark, true);
        }
    }
}
