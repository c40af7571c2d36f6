//! The built-in `sardonyx/null` output: it discards every segment, for jobs whose results leave
//! through trigger syncs.

use std::sync::Arc;

use sardonyx_connectors::ConnectorError;

use crate::plugin::{OutputPlugin, PluginFamily, SegmentSink};
use crate::segment::Segment;

/// The `sardonyx/null` output.
pub(crate) fn family() -> PluginFamily {
    PluginFamily {
        outputs: vec![(
            "sardonyx/null",
            OutputPlugin {
                check: Arc::new(|_| Vec::new()),
                open: Arc::new(|_| Ok(Box::new(NullOutput) as Box<dyn SegmentSink>)),
            },
        )],
        ..PluginFamily::default()
    }
}

struct NullOutput;

impl SegmentSink for NullOutput {
    fn write(&mut self, _: &[Segment]) -> Result<(), ConnectorError> {
        Ok(())
    }
    fn flush(&mut self) -> Result<(), ConnectorError> {
        Ok(())
    }
}
