//! [`MetricsServer`]: the HTTP endpoint of `--metrics ADDR` — `/metrics` (Prometheus text
//! format), `/` (the dashboard), `/live` (its live part) and, for a peer process, `/cluster`
//! (the coordination log's time machine) — and the sampler that keeps the dashboard's history,
//! once a second.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use super::error::MetricsError;
use super::exposition;
use super::history::History;
use super::observed::Observed;
use super::page;
use super::summary;

/// How often the dashboard's history is sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// What the handlers share.
struct Shared {
    observed: Observed,
    history: Mutex<History>,
    started: Instant,
}

impl Shared {
    /// Seconds since the server started (the history's clock).
    fn now(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }
}

/// A running metrics endpoint; stops when [`MetricsServer::shutdown`] is called or it is
/// dropped.
pub struct MetricsServer {
    addr: SocketAddr,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl MetricsServer {
    /// Listens on `addr` (`host:port`; port 0 picks a free one) and serves what `observed`
    /// shows. Logs the address it bound and prints it on stderr:
    /// `metrics: http://ADDR/metrics · dashboard: http://ADDR/`.
    pub async fn start(addr: &str, observed: Observed) -> Result<MetricsServer, MetricsError> {
        exposition::note_process_start();
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| MetricsError::Listen {
                addr: addr.to_owned(),
                source,
            })?;
        let bound = listener
            .local_addr()
            .map_err(|source| MetricsError::Listen {
                addr: addr.to_owned(),
                source,
            })?;
        let shared = Arc::new(Shared {
            observed,
            history: Mutex::default(),
            started: Instant::now(),
        });
        let stop = CancellationToken::new();
        let app = axum::Router::new()
            .route("/", get(dashboard))
            .route("/live", get(live))
            .route("/metrics", get(metrics))
            .route("/cluster", get(time_machine))
            .with_state(shared.clone());
        let serving = {
            let stop = stop.clone();
            tokio::spawn(async move {
                let served = axum::serve(listener, app)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await;
                if let Err(e) = served {
                    tracing::warn!(error = %e, "the metrics endpoint stopped");
                }
            })
        };
        let sampling = tokio::spawn(sample_loop(shared, stop.clone()));
        tracing::info!(%bound, "metrics at http://{bound}/metrics, dashboard at http://{bound}/");
        eprintln!("metrics: http://{bound}/metrics · dashboard: http://{bound}/");
        Ok(MetricsServer {
            addr: bound,
            stop,
            tasks: vec![serving, sampling],
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving (requests in flight are finished).
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Samples the job's counters into the history once a second (the first right away, so that
/// the live throughput has a starting point).
async fn sample_loop(shared: Arc<Shared>, stop: CancellationToken) {
    let Some(job) = shared.observed.job.clone() else {
        return;
    };
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let sample = summary::sample(&job, shared.now());
        shared.history.lock().expect("history lock").push(sample);
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        exposition::encode(&shared.observed),
    )
}

async fn dashboard(State(shared): State<Arc<Shared>>) -> Html<String> {
    let history = shared.history.lock().expect("history lock");
    Html(page::render_page(&shared.observed, &history, shared.now()))
}

/// `/cluster?at=N`: the coordination log's time machine of a peer process.
async fn time_machine(
    State(shared): State<Arc<Shared>>,
    axum::extract::Query(query): axum::extract::Query<TimeMachineQuery>,
) -> axum::response::Response {
    match &shared.observed.cluster {
        Some(view) => Html(page::render_time_machine(view, query.at)).into_response(),
        None => (
            axum::http::StatusCode::NOT_FOUND,
            "not a peer process: no coordination log here",
        )
            .into_response(),
    }
}

/// The query of `/cluster`.
#[derive(serde::Deserialize)]
struct TimeMachineQuery {
    at: Option<u64>,
}

async fn live(State(shared): State<Arc<Shared>>) -> Html<String> {
    let history = shared.history.lock().expect("history lock");
    Html(page::render_live(&shared.observed, &history, shared.now()))
}
