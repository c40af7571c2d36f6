//! HTTP ingestion: `POST /ingest` with one JSON object or a JSON array of them.
//!
//! The reactive-platform pattern, validate then ingest: each segment is checked against an
//! optional schema (required fields and their types); a request is taken whole or not at all.
//!
//! | answer | when |
//! |---|---|
//! | 200 `{"accepted": n, "first": p, "last": q}` | (`ack: "polled"`, the default) every segment of the request has been taken by [`Source::poll_batch`], i.e. handed to the job; `first`/`last` are their positions |
//! | 202 `{"accepted": n}` | (`ack: "queued"`) the segments are in the bounded queue the job drains |
//! | 400 `{"error", "problems": [{"segment", "field", "message"}]}` | the body is not JSON, a segment is not an object, or a segment breaks the schema; nothing is taken |
//! | 413 `{"error"}` | the body is larger than `max_body_bytes` (refused on its `Content-Length` before anything is read, or as soon as more than that has arrived: a body is never read whole), or holds more segments than the whole queue |
//! | 503 + `Retry-After` | the queue to the job is full (the job is behind), or the source is closing; nothing is taken |
//!
//! The queue holds at most `queue_capacity` segments: the server never buffers without bound.
//! With `ack: "polled"` a request waits (holding no queue slot beyond its own segments) until the
//! job takes it; if the source closes first, the request is answered 503 and nothing of it is
//! handed to the job. A segment answered 200 has been handed to the job, but HTTP cannot replay:
//! if the process dies before the job has made it durable, it is lost unless the client sends it
//! again (clients retry what was not answered; the job's dedup filter drops repeats).
//!
//! Positions are sequence numbers on partition 0: the n-th segment handed out has offset n.
//! [`Source::seek`] only makes numbering continue after a restart. The source never finishes
//! ([`SourceBatch::Done`]) unless [`HttpSource::close`] was called and the queue is drained.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::oneshot;

use crate::params::{self, Fields, Problems};
use crate::{ConnectorError, Position, Record, Source, SourceBatch};

/// When a request is answered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AckMode {
    /// 200 once the job has taken every segment of the request from the queue (the default).
    #[default]
    Polled,
    /// 202 once the segments are in the bounded queue.
    Queued,
}

/// The JSON type a schema requires of a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldType {
    /// A JSON string.
    String,
    /// A JSON number without a fraction.
    Integer,
    /// Any JSON number.
    Number,
    /// `true` or `false`.
    Boolean,
    /// A JSON object.
    Object,
    /// A JSON array.
    Array,
}

impl FieldType {
    const NAMES: &'static str = "string, integer, number, boolean, object, array";

    fn parse(name: &str) -> Option<Self> {
        serde_json::from_value(Value::String(name.to_string())).ok()
    }

    fn accepts(self, v: &Value) -> bool {
        match self {
            FieldType::String => v.is_string(),
            FieldType::Integer => v.is_i64() || v.is_u64(),
            FieldType::Number => v.is_number(),
            FieldType::Boolean => v.is_boolean(),
            FieldType::Object => v.is_object(),
            FieldType::Array => v.is_array(),
        }
    }

    fn article(self) -> &'static str {
        match self {
            FieldType::String => "a string",
            FieldType::Integer => "an integer",
            FieldType::Number => "a number",
            FieldType::Boolean => "a boolean",
            FieldType::Object => "an object",
            FieldType::Array => "an array",
        }
    }
}

/// What every ingested segment must look like.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schema {
    /// Fields every segment must have (not null), with their types.
    #[serde(default)]
    pub required: BTreeMap<String, FieldType>,
}

impl Schema {
    /// Every problem of one segment as `(field, message)`.
    pub fn check(&self, segment: &Value) -> Vec<(String, String)> {
        let Some(obj) = segment.as_object() else {
            return vec![(
                String::new(),
                format!(
                    "a segment must be a JSON object, got {}",
                    params::kind(segment)
                ),
            )];
        };
        let mut problems = Vec::new();
        for (field, ty) in &self.required {
            match obj.get(field) {
                None | Some(Value::Null) => {
                    problems.push((field.clone(), format!("field {field:?} is required")))
                }
                Some(v) if !ty.accepts(v) => problems.push((
                    field.clone(),
                    format!(
                        "field {field:?} must be {}, got {} ({})",
                        ty.article(),
                        params::kind(v),
                        truncate(&v.to_string(), 40)
                    ),
                )),
                Some(_) => {}
            }
        }
        problems
    }
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

fn default_max_body_bytes() -> usize {
    1 << 20
}
fn default_queue_capacity() -> usize {
    10_000
}
fn default_retry_after_secs() -> u64 {
    1
}

/// Params of the `http` input plugin.
///
/// ```json
/// {"listen": "127.0.0.1:8080", "max_body_bytes": 1048576, "queue_capacity": 10000,
///  "retry_after_secs": 1, "ack": "polled",
///  "schema": {"required": {"vote_id": "integer", "candidate": "string"}}}
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSourceParams {
    /// The address to listen on, `ip:port` (port 0 picks a free port; see
    /// [`HttpSource::local_addr`]).
    pub listen: String,
    /// The largest request body accepted; larger ones get 413 without being read whole.
    /// Default 1 MiB (DESIGN §10's `max_line_bytes`: one body is one request's segments).
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// How many segments may wait for the job; when full, requests get 503. Default 10 000.
    #[serde(default = "default_queue_capacity")]
    pub queue_capacity: usize,
    /// The `Retry-After` (seconds) sent with 503. Default 1.
    #[serde(default = "default_retry_after_secs")]
    pub retry_after_secs: u64,
    /// When a request is answered: `polled` (default) or `queued`.
    #[serde(default)]
    pub ack: AckMode,
    /// Optional checks of every segment.
    #[serde(default)]
    pub schema: Option<Schema>,
}

/// Checks the params of the `http` input plugin; reports every problem.
pub fn validate(params: &Value) -> Problems {
    let mut f = match Fields::new(params) {
        Ok(f) => f,
        Err(p) => return p,
    };
    if let Some(listen) = f.string("listen", true) {
        if listen.parse::<SocketAddr>().is_err() {
            f.problem(
                "listen",
                format!("{listen:?} is not an ip:port address (e.g. \"127.0.0.1:8080\")"),
            );
        }
    }
    if f.unsigned("max_body_bytes", false) == Some(0) {
        f.problem("max_body_bytes", "must be at least 1");
    }
    if f.unsigned("queue_capacity", false) == Some(0) {
        f.problem("queue_capacity", "must be at least 1");
    }
    f.unsigned("retry_after_secs", false);
    if let Some(v) = f.value("ack", false) {
        if !matches!(v.as_str(), Some("polled" | "queued")) {
            f.problem("ack", format!("must be \"polled\" or \"queued\", got {v}"));
        }
    }
    match f.value("schema", false) {
        None => {}
        Some(Value::Object(schema)) => {
            for (k, v) in schema {
                if k != "required" {
                    f.problem(format!("schema.{k}"), "unknown field; expected: required");
                    continue;
                }
                match v {
                    Value::Object(fields) => {
                        for (field, ty) in fields {
                            if ty.as_str().and_then(FieldType::parse).is_none() {
                                f.problem(
                                    format!("schema.required.{field}"),
                                    format!(
                                        "unknown type {ty}; expected one of: {}",
                                        FieldType::NAMES
                                    ),
                                );
                            }
                        }
                    }
                    other => f.problem(
                        "schema.required",
                        format!("must map field names to types, got {}", params::kind(other)),
                    ),
                }
            }
        }
        Some(other) => f.problem(
            "schema",
            format!(
                "must be an object such as {{\"required\": {{\"id\": \"integer\"}}}}, got {}",
                params::kind(other)
            ),
        ),
    }
    f.finish()
}

/// Counters of what the endpoint answered, for tests and monitoring.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HttpStats {
    /// Requests whose segments were all taken into the queue.
    pub accepted_requests: u64,
    /// Segments taken into the queue.
    pub accepted_segments: u64,
    /// Requests answered 400.
    pub invalid_requests: u64,
    /// Requests answered 413.
    pub too_large_requests: u64,
    /// Requests answered 503 because the queue was full or the source closing.
    pub busy_requests: u64,
}

/// One accepted request waiting in the queue.
struct Pending {
    segments: VecDeque<Vec<u8>>,
    /// Fired with the request's first and last positions once its last segment is taken.
    ack: Option<oneshot::Sender<(u64, u64)>>,
    /// The position of the request's first segment, once taken.
    first: Option<u64>,
}

#[derive(Default)]
struct Queue {
    items: VecDeque<Pending>,
    /// Segments in `items`.
    len: usize,
    closed: bool,
    stats: HttpStats,
}

struct Shared {
    queue: Mutex<Queue>,
    ready: Condvar,
    capacity: usize,
    retry_after: HeaderValue,
    ack: AckMode,
    schema: Option<Schema>,
    max_body_bytes: usize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn json_response(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body.to_string(),
    )
        .into_response()
}

fn busy(shared: &Shared, message: &str) -> Response {
    let mut response = json_response(StatusCode::SERVICE_UNAVAILABLE, json!({ "error": message }));
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, shared.retry_after.clone());
    response
}

/// The 413 answer to a body over `max_body_bytes` (`declared`: its `Content-Length`, if it
/// gave one).
fn too_large(shared: &Shared, declared: Option<u64>) -> Response {
    shared.lock().stats.too_large_requests += 1;
    let limit = shared.max_body_bytes;
    let size = match declared {
        Some(n) => format!("{n} bytes"),
        None => format!("more than {limit} bytes"),
    };
    json_response(
        StatusCode::PAYLOAD_TOO_LARGE,
        json!({ "error": format!(
            "the request body is {size}, over the limit max_body_bytes = {limit}: send fewer \
             segments per request"
        ) }),
    )
}

async fn ingest(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    // A declared length over the limit is refused before a byte of the body is read.
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > shared.max_body_bytes as u64) {
        return too_large(&shared, declared);
    }
    // Otherwise the body is read up to the limit (`DefaultBodyLimit`) and refused as soon as
    // it goes over.
    let body = match Bytes::from_request(request, &()).await {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return too_large(&shared, None)
        }
        Err(rejection) => {
            shared.lock().stats.invalid_requests += 1;
            return json_response(
                rejection.status(),
                json!({ "error": rejection.body_text() }),
            );
        }
    };
    let invalid = |shared: &Shared, error: String, problems: Vec<Value>| {
        shared.lock().stats.invalid_requests += 1;
        json_response(
            StatusCode::BAD_REQUEST,
            json!({ "error": error, "problems": problems }),
        )
    };
    let doc: Value = match serde_json::from_slice(&body) {
        Ok(doc) => doc,
        Err(e) => return invalid(&shared, format!("the body is not JSON: {e}"), Vec::new()),
    };
    let segments = match doc {
        Value::Array(items) => items,
        other => vec![other],
    };
    let mut problems = Vec::new();
    let default_schema = Schema::default();
    let schema = shared.schema.as_ref().unwrap_or(&default_schema);
    for (i, segment) in segments.iter().enumerate() {
        for (field, message) in schema.check(segment) {
            problems.push(json!({"segment": i, "field": field, "message": message}));
        }
    }
    if !problems.is_empty() {
        let first = problems[0]["message"].as_str().unwrap_or_default();
        let error = format!(
            "{} invalid segment field(s); first: segment {}: {first}",
            problems.len(),
            problems[0]["segment"]
        );
        return invalid(&shared, error, problems);
    }
    let n = segments.len();
    if n == 0 {
        return json_response(StatusCode::OK, json!({ "accepted": 0 }));
    }
    let encoded: VecDeque<Vec<u8>> = segments
        .iter()
        .map(|s| s.to_string().into_bytes())
        .collect();
    let (tx, rx) = oneshot::channel();
    {
        let mut q = shared.lock();
        if q.closed {
            q.stats.busy_requests += 1;
            drop(q);
            return busy(&shared, "the source is closing");
        }
        if n > shared.capacity {
            q.stats.too_large_requests += 1;
            return json_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                json!({ "error": format!("the request holds {n} segments, more than the queue's capacity of {}: split it", shared.capacity) }),
            );
        }
        if q.len + n > shared.capacity {
            q.stats.busy_requests += 1;
            drop(q);
            return busy(
                &shared,
                "the job is behind: the ingestion queue is full, retry later",
            );
        }
        q.len += n;
        q.stats.accepted_requests += 1;
        q.stats.accepted_segments += n as u64;
        q.items.push_back(Pending {
            segments: encoded,
            ack: (shared.ack == AckMode::Polled).then_some(tx),
            first: None,
        });
    }
    shared.ready.notify_all();
    match shared.ack {
        AckMode::Queued => json_response(StatusCode::ACCEPTED, json!({ "accepted": n })),
        AckMode::Polled => match rx.await {
            Ok((first, last)) => json_response(
                StatusCode::OK,
                json!({ "accepted": n, "first": first, "last": last }),
            ),
            // The source closed before taking the request: nothing of it reached the job.
            Err(_) => busy(
                &shared,
                "the source closed before the job took these segments",
            ),
        },
    }
}

/// An HTTP ingestion endpoint as a source: requests are validated, queued (bounded), and handed
/// to the job by [`Source::poll_batch`].
pub struct HttpSource {
    shared: Arc<Shared>,
    addr: SocketAddr,
    next: u64,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
}

impl HttpSource {
    /// Opens the source from the plugin's params JSON.
    pub fn from_params(params: &Value) -> Result<Self, ConnectorError> {
        Self::open(params::parse("http", params, validate)?)
    }

    /// Binds the address and starts serving on a thread of its own (a one-thread tokio runtime).
    pub fn open(params: HttpSourceParams) -> Result<Self, ConnectorError> {
        let context = format!("listening on {}", params.listen);
        let addr: SocketAddr = params
            .listen
            .parse()
            .map_err(|e| ConnectorError::fatal(&context, format!("{e}")))?;
        let listener =
            std::net::TcpListener::bind(addr).map_err(|e| ConnectorError::io(&context, &e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| ConnectorError::io(&context, &e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| ConnectorError::io(&context, &e))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ConnectorError::io("starting the HTTP source's runtime", &e))?;
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            ready: Condvar::new(),
            capacity: params.queue_capacity.max(1),
            retry_after: HeaderValue::from(params.retry_after_secs),
            ack: params.ack,
            schema: params.schema.clone(),
            max_body_bytes: params.max_body_bytes,
        });
        let app = Router::new()
            .route("/ingest", post(ingest))
            .layer(DefaultBodyLimit::max(params.max_body_bytes))
            .with_state(shared.clone());
        let (shutdown, stop) = oneshot::channel::<()>();
        let server = std::thread::Builder::new()
            .name(format!("http-ingest-{}", addr.port()))
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            tracing::error!("HTTP ingestion on {addr} cannot start: {e}");
                            return;
                        }
                    };
                    let serve = axum::serve(listener, app).with_graceful_shutdown(async {
                        let _ = stop.await;
                    });
                    if let Err(e) = serve.await {
                        tracing::error!("HTTP ingestion on {addr} stopped: {e}");
                    }
                });
            })
            .map_err(|e| ConnectorError::io("starting the HTTP source's thread", &e))?;
        Ok(HttpSource {
            shared,
            addr,
            next: 0,
            shutdown: Some(shutdown),
            server: Some(server),
        })
    }

    /// The address the endpoint listens on (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// What the endpoint has answered so far.
    pub fn stats(&self) -> HttpStats {
        self.shared.lock().stats
    }

    /// Stops accepting requests (they get 503); the source finishes once the queue is drained.
    pub fn close(&self) {
        self.shared.lock().closed = true;
        self.shared.ready.notify_all();
    }
}

impl Source for HttpSource {
    fn poll_batch(&mut self, max: usize, timeout: Duration) -> Result<SourceBatch, ConnectorError> {
        let deadline = Instant::now() + timeout;
        let mut acks = Vec::new();
        let mut out = Vec::new();
        {
            let mut q = self.shared.lock();
            while q.len == 0 && !q.closed {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Ok(SourceBatch::Idle);
                }
                q = self
                    .shared
                    .ready
                    .wait_timeout(q, left)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            if q.len == 0 {
                return Ok(SourceBatch::Done);
            }
            while out.len() < max {
                let Some(item) = q.items.front_mut() else {
                    break;
                };
                let Some(payload) = item.segments.pop_front() else {
                    break;
                };
                self.next += 1;
                item.first.get_or_insert(self.next);
                out.push(Record {
                    position: Position {
                        partition: 0,
                        offset: self.next,
                    },
                    index: self.next,
                    payload,
                    fault: None,
                });
                if item.segments.is_empty() {
                    let done = q.items.pop_front().expect("front exists");
                    if let (Some(ack), Some(first)) = (done.ack, done.first) {
                        acks.push((ack, first, self.next));
                    }
                }
            }
            q.len -= out.len();
        }
        // Answer the requests only now that their segments are the job's.
        for (ack, first, last) in acks {
            let _ = ack.send((first, last));
        }
        Ok(SourceBatch::Records(out))
    }

    /// Continues the numbering after `position` (HTTP requests cannot be replayed).
    fn seek(&mut self, position: Position) -> Result<(), ConnectorError> {
        if position.partition != 0 {
            return Err(ConnectorError::fatal(
                "seeking the HTTP source",
                format!("it has only partition 0, not {}", position.partition),
            ));
        }
        self.next = position.offset;
        Ok(())
    }

    /// One partition, 0: requests are numbered in the order the job takes them.
    fn partitions(&self) -> Vec<u32> {
        vec![0]
    }
}

impl Drop for HttpSource {
    fn drop(&mut self) {
        {
            let mut q = self.shared.lock();
            q.closed = true;
            // Dropping the pending acknowledgements answers their requests with 503.
            q.items.clear();
            q.len = 0;
        }
        self.shared.ready.notify_all();
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = server.join();
        }
    }
}
