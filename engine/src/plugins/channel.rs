//! The built-in `sardonyx/channel` plugins, for a job embedded in a program: segments enter and
//! leave through in-memory channels that the program opens by name on the registry
//! (`Registry::input_channel`, `Registry::output_channel`) before the job runs. The open
//! channels are [`ChannelEndpoints`], shared by a registry and its clones.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use sardonyx_connectors::ConnectorError;
use tokio::sync::mpsc;

use crate::plugin::{
    require_string, InputPlugin, InputReader, OutputPlugin, PluginContext, PluginFamily,
    SegmentSink,
};
use crate::segment::{Segment, Value};

/// The channels opened by name and not yet taken by a job: an input channel's receiver goes to
/// the job's input peer; an output channel's sender is cloned to each output peer.
#[derive(Clone, Default)]
pub(crate) struct ChannelEndpoints(Arc<Mutex<Channels>>);

#[derive(Default)]
struct Channels {
    inputs: HashMap<String, mpsc::Receiver<Segment>>,
    outputs: HashMap<String, mpsc::Sender<Segment>>,
}

impl ChannelEndpoints {
    fn lock(&self) -> MutexGuard<'_, Channels> {
        self.0.lock().expect("channel registry poisoned")
    }

    /// Opens the input channel `name` (replacing one of that name); see
    /// `Registry::input_channel`.
    pub(crate) fn open_input(&self, name: &str, capacity: usize) -> mpsc::Sender<Segment> {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        self.lock().inputs.insert(name.to_owned(), rx);
        tx
    }

    /// Opens the output channel `name` (replacing one of that name); see
    /// `Registry::output_channel`.
    pub(crate) fn open_output(&self, name: &str, capacity: usize) -> mpsc::Receiver<Segment> {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        self.lock().outputs.insert(name.to_owned(), tx);
        rx
    }

    /// Drops the output channels' senders, so their receivers close once the peers' clones go.
    pub(crate) fn close_outputs(&self) {
        self.lock().outputs.clear();
    }
}

/// The channel a `sardonyx/channel` task names (its `channel` param, checked to be a string).
fn channel_name<'a>(ctx: &PluginContext<'a>) -> &'a str {
    ctx.task
        .params
        .get("channel")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// The `sardonyx/channel` input and output, reading and writing the channels of `channels`.
pub(crate) fn family(channels: &ChannelEndpoints) -> PluginFamily {
    PluginFamily {
        inputs: vec![("sardonyx/channel", {
            let channels = channels.clone();
            InputPlugin {
                check: Arc::new(|p| require_string(p, "channel")),
                open: Arc::new(move |ctx| {
                    let name = channel_name(ctx);
                    let mut ch = channels.lock();
                    if ctx.peer > 0 {
                        return Ok(InputReader::Nothing);
                    }
                    ch.inputs
                        .remove(name)
                        .map(InputReader::Segments)
                        .ok_or_else(|| {
                            format!(
                                "no input channel \"{name}\" was opened (Registry::input_channel)"
                            )
                        })
                }),
            }
        })],
        outputs: vec![("sardonyx/channel", {
            let channels = channels.clone();
            OutputPlugin {
                check: Arc::new(|p| require_string(p, "channel")),
                open: Arc::new(move |ctx| {
                    let name = channel_name(ctx);
                    let ch = channels.lock();
                    ch.outputs
                    .get(name)
                    .map(|tx| Box::new(ChannelOutput(tx.clone())) as Box<dyn SegmentSink>)
                    .ok_or_else(|| format!("no output channel \"{name}\" was opened (Registry::output_channel)"))
                }),
            }
        })],
        ..PluginFamily::default()
    }
}

struct ChannelOutput(mpsc::Sender<Segment>);

impl SegmentSink for ChannelOutput {
    fn write(&mut self, segments: &[Segment]) -> Result<(), ConnectorError> {
        for s in segments {
            self.0
                .blocking_send(s.clone())
                .map_err(|_| ConnectorError::fatal("output channel", "the receiver was dropped"))?;
        }
        Ok(())
    }
    fn flush(&mut self) -> Result<(), ConnectorError> {
        Ok(())
    }
}
