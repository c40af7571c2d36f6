//! The built-in plugins, one module a family: `sardonyx/jsonl` (files of JSON lines), `sardonyx/channel`
//! (in-memory channels for an embedding program), `sardonyx/null` (an output that discards), and
//! the connectors of `sardonyx-connectors` (Kafka, PostgreSQL, HTTP). Each module hands its
//! plugins to the registry as one `PluginFamily`, written against `crate::plugin` alone.
//! [`test_hooks`] holds plugins that only tests' processes register.

pub(crate) mod channel;
pub(crate) mod connector;
pub(crate) mod jsonl;
pub(crate) mod null;
pub(crate) mod test_hooks;
