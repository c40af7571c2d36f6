//! [`MetricsError`]: why the metrics endpoint could not start or a chart could not be drawn.

/// Why the metrics endpoint could not start, or a chart could not be drawn.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// Listening on the address failed (in use, not permitted).
    #[error("listening on {addr} for metrics")]
    Listen {
        /// The address given.
        addr: String,
        /// The OS's reason.
        #[source]
        source: std::io::Error,
    },
    /// `plotters` could not draw a chart.
    #[error("drawing the {chart} chart")]
    Chart {
        /// Which chart.
        chart: &'static str,
        /// What `plotters` said.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}
