//! `serve`: open the host, bind both listeners, run until SIGTERM or Ctrl-C, then shut down
//! gracefully: stop accepting, let in-flight commands finish, flush, exit.

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;

use super::{admin, gateway, AppState};
use crate::app::Host;
use crate::config::Config;
use crate::telemetry::Metrics;

/// The addresses the APIs are bound to (useful with port 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bound {
    /// The gateway API.
    pub gateway: SocketAddr,
    /// The admin API.
    pub admin: SocketAddr,
}

/// Run the host until SIGTERM or SIGINT. `on_bound` is called once both listeners are bound and
/// the host is ready to serve.
///
/// # Errors
///
/// When the host cannot open (storage, manifest, NATS), a listener cannot be bound, or the final
/// flush fails.
pub async fn serve(config: Config, on_bound: impl FnOnce(Bound)) -> anyhow::Result<()> {
    let grace = Duration::from_secs(config.shutdown_grace_secs);
    let linger = Duration::from_millis(config.shutdown_linger_ms);
    let (gateway_addr, admin_addr) = (config.gateway_listen, config.admin_listen);
    // Bound before the host opens, so that cluster mode can announce the real addresses (port 0).
    let gateway_listener = tokio::net::TcpListener::bind(gateway_addr)
        .await
        .with_context(|| format!("bind gateway_listen {gateway_addr}"))?;
    let admin_listener = tokio::net::TcpListener::bind(admin_addr)
        .await
        .with_context(|| format!("bind admin_listen {admin_addr}"))?;
    let bound = Bound {
        gateway: gateway_listener.local_addr()?,
        admin: admin_listener.local_addr()?,
    };
    let mut config = config;
    config
        .advertise_gateway
        .get_or_insert_with(|| format!("http://{}", bound.gateway));
    config
        .advertise_admin
        .get_or_insert_with(|| format!("http://{}", bound.admin));
    let host = Host::open(config).await?;
    let state = AppState::new(&host, Metrics::new());
    tracing::info!(
        gateway = %bound.gateway,
        admin = %bound.admin,
        event_log = host.service.log().kind(),
        aggregate_types = host.registry.manifest().aggregates.len(),
        "serving"
    );
    // Listen for SIGTERM before announcing the addresses: a signal sent as soon as the
    // `listening` line appears must start a graceful shutdown, not kill the process.
    let signals = Signals::install();
    on_bound(bound);

    {
        let state = state.clone();
        tokio::spawn(async move {
            let signal = signals.termination().await;
            tracing::info!(
                signal,
                "shutting down: refusing new commands, finishing those in flight"
            );
            state.begin_shutdown();
            // Keep the listeners a moment: requests already on their way (often on keep-alive
            // connections) get `503 shutting-down` with `Connection: close` instead of a closed
            // connection, so clients know to retry elsewhere.
            tokio::time::sleep(linger).await;
            state.close_listeners();
        });
    }
    if let Some(cluster) = &host.cluster {
        cluster.clone().serve_forwards(gateway(state.clone()));
    }
    let ingress = host
        .config
        .nats_ingress_subject
        .as_ref()
        .filter(|p| !p.is_empty());
    if let (Some(client), Some(prefix)) = (&host.nats, ingress) {
        super::ingress::serve(
            client.clone(),
            prefix.clone(),
            gateway(state.clone()),
            state.shutdown_signal(),
        );
    }
    let gateway_server = axum::serve(gateway_listener, gateway(state.clone()))
        .with_graceful_shutdown(state.listeners_closed());
    let admin_server = axum::serve(admin_listener, admin(state.clone()))
        .with_graceful_shutdown(state.listeners_closed());
    let servers =
        async { tokio::try_join!(gateway_server.into_future(), admin_server.into_future()) };
    let deadline = {
        let stopping = state.shutdown_signal();
        async move {
            stopping.await;
            tokio::time::sleep(grace).await;
        }
    };
    tokio::select! {
        r = servers => { r.context("HTTP server")?; }
        () = deadline => tracing::warn!(grace_secs = grace.as_secs(), "grace period over; closing open connections"),
    }
    // Commands run on their own tasks; wait for any whose client went away.
    let left = state.tenants().wait_all_idle(grace).await;
    if left > 0 {
        tracing::warn!(in_flight = left, "commands still running at exit");
    }
    if let Some(cluster) = &host.cluster {
        cluster.leave().await;
    }
    host.service.flush().await.context("flush on shutdown")?;
    tracing::info!("stopped");
    Ok(())
}

/// The termination signals, registered when created.
struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn install() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let term = signal(SignalKind::terminate())
                .inspect_err(|e| {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the host")
                })
                .ok();
            let int = signal(SignalKind::interrupt()).ok();
            Self { term, int }
        }
        #[cfg(not(unix))]
        Self {}
    }

    /// Wait for SIGTERM or SIGINT (Ctrl-C); names the signal.
    async fn termination(self) -> &'static str {
        #[cfg(unix)]
        {
            let (mut term, mut int) = (self.term, self.int);
            tokio::select! {
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => "SIGTERM",
                _ = async { match int.as_mut() { Some(i) => { i.recv().await; } None => { let _ = tokio::signal::ctrl_c().await; } } } => "SIGINT",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        }
    }
}
