//! The built-in `sardonyx/jsonl` plugins: an input reading one JSON document a line from a file
//! (each of its peers the lines that start in its blocks of the file's bytes, dealt out in
//! turn, `params.stripe_block_bytes` each, as one partition resumed at a byte offset), an
//! output writing one file per peer, and a sync function appending firings to a file. The
//! files themselves are `sardonyx_connectors::jsonl`'s; this module adapts them to segments
//! and registers them.

use std::path::PathBuf;
use std::sync::Arc;

use sardonyx_connectors::jsonl::{JsonLinesSink, JsonLinesSource};
use sardonyx_connectors::{ConnectorError, Position, Sink, Source};

use crate::job::TaskSpec;
use crate::plugin::{
    require_string, to_json, InputPlugin, InputReader, OutputPlugin, PluginFamily, SegmentSink,
    SyncPlugin, SyncSink,
};
use crate::segment::{Map, Segment, Value};

/// The `sardonyx/jsonl` input, output and sync function.
pub(crate) fn family() -> PluginFamily {
    PluginFamily {
        inputs: vec![(
            "sardonyx/jsonl",
            InputPlugin {
                check: Arc::new(|p| {
                    let mut problems = require_string(p, "path");
                    problems.extend(sardonyx_connectors::jsonl::validate_source(&to_json(p)));
                    problems
                }),
                open: Arc::new(|ctx| {
                    let path = param_path(ctx.task)?;
                    let params = to_json(&ctx.task.params);
                    let limit = sardonyx_connectors::jsonl::max_line_bytes(&params)
                        .map_err(|e| e.to_string())?;
                    let block = sardonyx_connectors::jsonl::stripe_block_bytes(&params)
                        .map_err(|e| e.to_string())?;
                    // Each peer reads the lines that start in its blocks of the file.
                    let mut source = JsonLinesSource::open_stripe(&path, ctx.peer, ctx.n_peers)
                        .map_err(|e| e.to_string())?
                        .with_stripe_block_bytes(block)
                        .with_max_line_bytes(limit);
                    // One partition per peer: resume just after the peer's committed offset.
                    if let Some(offset) = ctx.positions.get(0) {
                        source
                            .seek(Position {
                                partition: 0,
                                offset,
                            })
                            .map_err(|e| format!("resuming at offset {offset}: {e}"))?;
                    }
                    Ok(InputReader::Records(Box::new(source)))
                }),
            },
        )],
        outputs: vec![(
            "sardonyx/jsonl",
            OutputPlugin {
                check: Arc::new(|p| {
                    let mut problems = require_string(p, "path");
                    problems.extend(sardonyx_connectors::retry::check_params(&to_json(p)));
                    problems
                }),
                open: Arc::new(|ctx| {
                    let path = peer_path(param_path(ctx.task)?, ctx.peer, ctx.n_peers);
                    let sink = if ctx.resuming {
                        JsonLinesSink::resume(&path)
                    } else {
                        JsonLinesSink::create(&path)
                    };
                    let sink = sink.map_err(|e| e.to_string())?;
                    Ok(Box::new(JsonLinesOutput(sink)) as Box<dyn SegmentSink>)
                }),
            },
        )],
        syncs: vec![(
            "sardonyx/jsonl",
            SyncPlugin {
                check: Arc::new(|p| require_string(p, "path")),
                open: Arc::new(|ctx| {
                    let path = ctx
                        .params
                        .get("path")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    JsonLinesSync::open(path, ctx.resuming)
                        .map(|s| Box::new(s) as Box<dyn SyncSink>)
                        .map_err(|e| format!("{path}: {e}"))
                }),
            },
        )],
    }
}

fn param_path(task: &TaskSpec) -> Result<PathBuf, String> {
    task.params
        .get("path")
        .and_then(Value::as_str)
        .map(PathBuf::from)
        .ok_or_else(|| format!("task \"{}\": params.path is missing", task.name))
}

/// With several peers, each output peer writes its own file: `out.jsonl` → `out.1.jsonl` …
/// (peer 0 keeps the plain name).
fn peer_path(path: PathBuf, peer: usize, n_peers: usize) -> PathBuf {
    if n_peers <= 1 || peer == 0 {
        return path;
    }
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = match path.extension() {
        Some(ext) => format!("{stem}.{peer}.{}", ext.to_string_lossy()),
        None => format!("{stem}.{peer}"),
    };
    path.with_file_name(name)
}

struct JsonLinesOutput(JsonLinesSink);

impl SegmentSink for JsonLinesOutput {
    fn write(&mut self, segments: &[Segment]) -> Result<(), ConnectorError> {
        let lines: Vec<Vec<u8>> = segments
            .iter()
            .map(|s| crate::segment::to_json_string(s).into_bytes())
            .collect();
        self.0.write_batch(&lines)
    }
    fn flush(&mut self) -> Result<(), ConnectorError> {
        self.0.flush()
    }
}

/// The built-in `sardonyx/jsonl` sync. Several triggers may write one file: each sink appends
/// (O_APPEND) a batch's whole lines in one write at each flush, so lines never interleave.
struct JsonLinesSync {
    file: std::fs::File,
    pending: String,
}

impl JsonLinesSync {
    /// Opens `path` for appending; a fresh job empties it first, a resuming job cuts a torn last
    /// line. (All syncs are opened before any writes, so emptying never loses a firing.)
    fn open(path: &str, resuming: bool) -> std::io::Result<Self> {
        let path = std::path::Path::new(path);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        if resuming {
            sardonyx_connectors::jsonl::cut_torn_line(path)?;
        } else {
            std::fs::File::create(path)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(JsonLinesSync {
            file,
            pending: String::new(),
        })
    }
}

impl SyncSink for JsonLinesSync {
    fn sync(&mut self, firing: &Map) -> Result<(), String> {
        firing.write_json(&mut self.pending);
        self.pending.push('\n');
        Ok(())
    }
    fn flush(&mut self) -> Result<(), String> {
        use std::io::Write;
        if self.pending.is_empty() {
            return Ok(());
        }
        self.file
            .write_all(self.pending.as_bytes())
            .map_err(|e| e.to_string())?;
        self.pending.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_path_numbers_every_peer_but_the_first() {
        let path = PathBuf::from("out/result.jsonl");
        assert_eq!(peer_path(path.clone(), 0, 1), path);
        assert_eq!(peer_path(path.clone(), 0, 3), path);
        assert_eq!(
            peer_path(path.clone(), 2, 3),
            PathBuf::from("out/result.2.jsonl")
        );
        assert_eq!(
            peer_path(PathBuf::from("out/result"), 1, 2),
            PathBuf::from("out/result.1")
        );
    }
}
