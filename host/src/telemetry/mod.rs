//! Logging and metrics: the `tracing` subscriber the binary installs, and the Prometheus registry
//! with the host's metrics (every per-command metric labelled by aggregate type and `tenant_id`).

mod metrics;

pub use self::metrics::{
    tenant_label, CommandOutcomeLabel, Metrics, INVALID_TENANT_LABEL, OTHER_TENANT_LABEL,
    UNKNOWN_TYPE_LABEL,
};

use crate::config::LogFormat;

/// Install the global `tracing` subscriber writing to stderr: `RUST_LOG` if set, else
/// `default_filter` (e.g. `info`). Calling it twice keeps the first subscriber.
pub fn init_tracing(format: LogFormat, default_filter: &str) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
    };
}

/// The trace id of a W3C `traceparent` header (`00-<trace id>-<parent id>-<flags>`), if the
/// header is well formed. Malformed values are ignored, as the W3C specification requires.
///
/// # Examples
///
/// ```
/// use aggregate_host::telemetry::trace_id;
/// let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
/// assert_eq!(trace_id(tp), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
/// assert_eq!(trace_id("garbage"), None);
/// assert_eq!(trace_id("00-00000000000000000000000000000000-00f067aa0ba902b7-01"), None);
/// ```
pub fn trace_id(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.trim().split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let ok = hex(version, 2)
        && version != "ff"
        && hex(trace, 32)
        && trace.bytes().any(|b| b != b'0')
        && hex(parent, 16)
        && parent.bytes().any(|b| b != b'0')
        && hex(flags, 2)
        && (version != "00" || parts.next().is_none());
    ok.then_some(trace)
}
