//! The registry: everything a job names, by name.
//!
//! Job files refer to code by name — functions, predicates, group functions, aggregations, sync
//! functions, lifecycles, plugins. A [`Registry`] maps those names to Rust values. The built-ins
//! are registered by [`Registry::new`]; validation rejects a job that names anything missing,
//! so nothing unregistered is discovered at run time. What a plugin or lifecycle is lives in
//! [`crate::plugin`]; the built-in plugins themselves in `crate::plugins`.

use std::collections::HashMap;
use std::sync::Arc;

use sardonyx_windowing::aggregation::Aggregation;
use tokio::sync::mpsc;

use crate::lifecycle::Lifecycle;
use crate::plugin::{InputPlugin, OutputPlugin, PluginFamily, PluginKind, SyncPlugin};
use crate::plugins::{self, channel::ChannelEndpoints};
use crate::segment::{Map, Segment, Value};

/// A function task's code: one segment in, zero or more out; an `Err` sends the segment to the
/// error path with the message. The second argument is the task's `params`.
pub type FunctionFn = Arc<dyn Fn(Segment, &Map) -> Result<Vec<Segment>, String> + Send + Sync>;
/// A predicate for flow conditions and punctuation triggers: the segment and the parameters
/// given in the job (`Value::Null` if none).
pub type PredicateFn = Arc<dyn Fn(&Segment, &Value) -> bool + Send + Sync>;
/// Computes the grouping key of a segment (`group_by_fn`).
pub type GroupFn = Arc<dyn Fn(&Segment) -> Value + Send + Sync>;

/// Named code for jobs: functions, predicates, group functions, aggregations, sync functions,
/// lifecycles and plugins.
#[derive(Clone)]
pub struct Registry {
    functions: HashMap<String, FunctionFn>,
    predicates: HashMap<String, PredicateFn>,
    group_fns: HashMap<String, GroupFn>,
    aggregations: HashMap<String, Arc<dyn Aggregation>>,
    syncs: HashMap<String, SyncPlugin>,
    lifecycles: HashMap<String, Lifecycle>,
    inputs: HashMap<String, InputPlugin>,
    outputs: HashMap<String, OutputPlugin>,
    channels: ChannelEndpoints,
    /// The built-in `sardonyx/identity` (the runtime skips calling it).
    identity: FunctionFn,
}

impl Default for Registry {
    fn default() -> Self {
        Registry::new()
    }
}

impl Registry {
    /// A registry holding the built-ins: the function `sardonyx/identity`, the predicates
    /// `sardonyx/always` and `sardonyx/never`, the plugins `sardonyx/jsonl` (input and output),
    /// `sardonyx/channel` (input and output) and `sardonyx/null` (output), the sync function
    /// `sardonyx/jsonl`, and the connectors' plugins (`kafka`, `postgres`, `http`,
    /// `sardonyx/s3`).
    pub fn new() -> Self {
        let mut r = Registry {
            functions: HashMap::new(),
            predicates: HashMap::new(),
            group_fns: HashMap::new(),
            aggregations: HashMap::new(),
            syncs: HashMap::new(),
            lifecycles: HashMap::new(),
            inputs: HashMap::new(),
            outputs: HashMap::new(),
            channels: ChannelEndpoints::default(),
            identity: Arc::new(|s, _| Ok(vec![s])),
        };
        r.functions
            .insert("sardonyx/identity".to_owned(), r.identity.clone());
        r.register_predicate("sardonyx/always", |_, _| true);
        r.register_predicate("sardonyx/never", |_, _| false);
        r.register_family(plugins::jsonl::family());
        r.register_family(plugins::null::family());
        r.register_family(plugins::channel::family(&r.channels));
        r.register_family(plugins::connector::family());
        // Only in a test's process (an environment variable): see `plugins::test_hooks`.
        if let Some(family) = plugins::test_hooks::family() {
            r.register_family(family);
        }
        r
    }

    /// Registers a function task's code under `name`.
    pub fn register_function<F>(&mut self, name: &str, f: F) -> &mut Self
    where
        F: Fn(Segment, &Map) -> Result<Vec<Segment>, String> + Send + Sync + 'static,
    {
        self.functions.insert(name.to_owned(), Arc::new(f));
        self
    }

    /// Registers a predicate under `name`.
    pub fn register_predicate<F>(&mut self, name: &str, f: F) -> &mut Self
    where
        F: Fn(&Segment, &Value) -> bool + Send + Sync + 'static,
    {
        self.predicates.insert(name.to_owned(), Arc::new(f));
        self
    }

    /// Registers a grouping function under `name`.
    pub fn register_group_fn<F>(&mut self, name: &str, f: F) -> &mut Self
    where
        F: Fn(&Segment) -> Value + Send + Sync + 'static,
    {
        self.group_fns.insert(name.to_owned(), Arc::new(f));
        self
    }

    /// Registers a user aggregation under `name`.
    pub fn register_aggregation(&mut self, name: &str, a: Arc<dyn Aggregation>) -> &mut Self {
        self.aggregations.insert(name.to_owned(), a);
        self
    }

    /// Registers a sync function under `name`.
    pub fn register_sync(&mut self, name: &str, s: SyncPlugin) -> &mut Self {
        self.syncs.insert(name.to_owned(), s);
        self
    }

    /// Registers a lifecycle under `name`.
    pub fn register_lifecycle(&mut self, name: &str, l: Lifecycle) -> &mut Self {
        self.lifecycles.insert(name.to_owned(), l);
        self
    }

    /// Registers an input plugin under `name`.
    pub fn register_input(&mut self, name: &str, p: InputPlugin) -> &mut Self {
        self.inputs.insert(name.to_owned(), p);
        self
    }

    /// Registers an output plugin under `name`.
    pub fn register_output(&mut self, name: &str, p: OutputPlugin) -> &mut Self {
        self.outputs.insert(name.to_owned(), p);
        self
    }

    /// Registers every plugin of `family`: its inputs, outputs and sync functions.
    pub fn register_family(&mut self, family: PluginFamily) -> &mut Self {
        for (name, p) in family.inputs {
            self.register_input(name, p);
        }
        for (name, p) in family.outputs {
            self.register_output(name, p);
        }
        for (name, s) in family.syncs {
            self.register_sync(name, s);
        }
        self
    }

    /// Opens the in-memory input channel `name` (for `sardonyx/channel` inputs with
    /// `params.channel = name`): segments sent here enter the job; dropping every sender ends
    /// the input. `capacity` bounds it, so a full job pushes back on the sender.
    pub fn input_channel(&self, name: &str, capacity: usize) -> mpsc::Sender<Segment> {
        self.channels.open_input(name, capacity)
    }

    /// Opens the in-memory output channel `name` (for `sardonyx/channel` outputs): the job's
    /// segments arrive here; the channel closes when the job ends.
    pub fn output_channel(&self, name: &str, capacity: usize) -> mpsc::Receiver<Segment> {
        self.channels.open_output(name, capacity)
    }

    pub(crate) fn drop_output_channels(&self) {
        self.channels.close_outputs();
    }

    /// True if a function is registered under `name`.
    pub fn has_function(&self, name: &str) -> bool {
        self.functions.contains_key(name)
    }
    /// True if a predicate is registered under `name`.
    pub fn has_predicate(&self, name: &str) -> bool {
        self.predicates.contains_key(name)
    }
    /// True if a group function is registered under `name`.
    pub fn has_group_fn(&self, name: &str) -> bool {
        self.group_fns.contains_key(name)
    }
    /// True if a user aggregation is registered under `name`.
    pub fn has_aggregation(&self, name: &str) -> bool {
        self.aggregations.contains_key(name)
    }
    /// True if a lifecycle is registered under `name`.
    pub fn has_lifecycle(&self, name: &str) -> bool {
        self.lifecycles.contains_key(name)
    }

    /// The function `name`.
    pub fn function(&self, name: &str) -> Option<&FunctionFn> {
        self.functions.get(name)
    }
    /// True if `f` is the built-in `sardonyx/identity` (each segment out unchanged; it cannot
    /// fail), not a function registered in its place.
    pub fn is_identity(&self, f: &FunctionFn) -> bool {
        Arc::ptr_eq(f, &self.identity)
    }
    /// The predicate `name`.
    pub fn predicate(&self, name: &str) -> Option<&PredicateFn> {
        self.predicates.get(name)
    }
    /// The group function `name`.
    pub fn group_fn(&self, name: &str) -> Option<&GroupFn> {
        self.group_fns.get(name)
    }
    /// The user aggregation `name`.
    pub fn aggregation(&self, name: &str) -> Option<&Arc<dyn Aggregation>> {
        self.aggregations.get(name)
    }
    /// The sync function `name`.
    pub fn sync(&self, name: &str) -> Option<&SyncPlugin> {
        self.syncs.get(name)
    }
    /// The lifecycle `name`.
    pub fn lifecycle(&self, name: &str) -> Option<&Lifecycle> {
        self.lifecycles.get(name)
    }
    /// The input plugin `name`.
    pub fn input(&self, name: &str) -> Option<&InputPlugin> {
        self.inputs.get(name)
    }
    /// The output plugin `name`.
    pub fn output(&self, name: &str) -> Option<&OutputPlugin> {
        self.outputs.get(name)
    }

    /// Problems with a plugin's params, or `None` if no such plugin is registered.
    pub fn plugin_params_problems(
        &self,
        name: &str,
        kind: PluginKind,
        params: &Map,
    ) -> Option<Vec<(String, String)>> {
        match kind {
            PluginKind::Input => self.inputs.get(name).map(|p| (p.check)(params)),
            PluginKind::Output => self.outputs.get(name).map(|p| (p.check)(params)),
        }
    }

    /// Problems with a sync function's params, or `None` if it is not registered.
    pub fn sync_params_problems(&self, name: &str, params: &Map) -> Option<Vec<(String, String)>> {
        self.syncs.get(name).map(|s| (s.check)(params))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names<T>(map: &HashMap<String, T>) -> Vec<&str> {
        let mut names: Vec<&str> = map.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// The built-ins a fresh registry holds, by kind: the names job files may use without
    /// registering anything.
    #[test]
    fn new_registers_every_builtin_family() {
        let r = Registry::new();
        assert_eq!(names(&r.functions), ["sardonyx/identity"]);
        assert_eq!(names(&r.predicates), ["sardonyx/always", "sardonyx/never"]);
        assert_eq!(
            names(&r.inputs),
            [
                "http",
                "kafka",
                "sardonyx/channel",
                "sardonyx/jsonl",
                "sardonyx/s3"
            ]
        );
        assert_eq!(
            names(&r.outputs),
            [
                "kafka",
                "postgres",
                "sardonyx/channel",
                "sardonyx/jsonl",
                "sardonyx/null",
                "sardonyx/s3"
            ]
        );
        assert_eq!(
            names(&r.syncs),
            ["postgres", "sardonyx/jsonl", "sardonyx/s3"]
        );
        assert!(r.group_fns.is_empty() && r.aggregations.is_empty() && r.lifecycles.is_empty());
        let identity = r.function("sardonyx/identity").expect("registered");
        assert!(r.is_identity(identity));
    }

    /// A family's plugins land under their names, beside what was registered before.
    #[test]
    fn register_family_adds_each_plugin_by_name() {
        let mut r = Registry::new();
        let output = r.output("sardonyx/null").expect("registered").clone();
        r.register_family(PluginFamily {
            outputs: vec![("my/discard", output)],
            ..PluginFamily::default()
        });
        assert!(r.output("my/discard").is_some());
        assert!(r.output("sardonyx/null").is_some());
        assert!(r.input("my/discard").is_none());
    }
}
