//! Which tenant a request acts for, and the per-tenant gate that drain and graceful shutdown use:
//! a count of commands in flight, a "draining" flag, and the time of the last request.
//!
//! The table grows only from accepted work: a tenant stays in it once it has an accepted command
//! (or readable data) on this host, is configured, or while it is drained by the admin API. A gate made
//! for a command of an unknown tenant is removed again when its last command ends without being
//! accepted, so made-up tenant ids cannot grow it.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderMap;
use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use tokio::sync::Notify;

use super::error::ApiError;
use crate::types::TenantId;

/// The tenant header.
pub const TENANT_HEADER: &str = "x-tenant-id";

#[derive(Default)]
struct Gate {
    in_flight: AtomicUsize,
    draining: AtomicBool,
    /// The tenant has accepted work here (or is configured): the gate is kept.
    known: AtomicBool,
    /// Milliseconds since the epoch of the last request; 0 = none.
    last_activity: AtomicI64,
    idle: Notify,
}

/// A tenant as `/admin/tenants` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantStatus {
    /// The tenant.
    pub tenant: TenantId,
    /// Commands running now.
    pub in_flight: usize,
    /// Whether commands are refused.
    pub draining: bool,
    /// When it last sent a request (since this host started).
    pub last_activity: Option<DateTime<Utc>>,
}

/// Tenant resolution and gates.
pub struct Tenants {
    multi_tenant: bool,
    hosted: Vec<TenantId>,
    gates: Arc<Mutex<HashMap<TenantId, Arc<Gate>>>>,
    shutting_down: AtomicBool,
    streams: Arc<Mutex<StreamCounts>>,
    routing: Option<Arc<crate::store::routed::Routing>>,
}

/// Event streams open now: per tenant (only tenants with at least one) and in all.
#[derive(Default)]
struct StreamCounts {
    per_tenant: HashMap<TenantId, usize>,
    total: usize,
}

/// An open event stream's place in the per-tenant and host-wide bounds; dropping it (the client
/// went away, or the host shuts down) frees the place.
pub struct StreamSlot {
    tenant: TenantId,
    streams: Arc<Mutex<StreamCounts>>,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut counts = self.streams.lock();
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.per_tenant.get_mut(&self.tenant) {
            *n -= 1;
            if *n == 0 {
                counts.per_tenant.remove(&self.tenant);
            }
        }
    }
}

/// A command in flight; dropping it lets drains and shutdown proceed.
pub struct InFlight {
    gate: Arc<Gate>,
    tenant: TenantId,
    gates: Arc<Mutex<HashMap<TenantId, Arc<Gate>>>>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.gate.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.gate.idle.notify_waiters();
            if !self.gate.known.load(Ordering::SeqCst) {
                // Admission counts under this lock, so a count still at 0 here means no command
                // of the tenant is running or being admitted.
                let mut gates = self.gates.lock();
                let idle = self.gate.in_flight.load(Ordering::SeqCst) == 0
                    && !self.gate.known.load(Ordering::SeqCst)
                    && !self.gate.draining.load(Ordering::SeqCst);
                if idle
                    && gates
                        .get(&self.tenant)
                        .is_some_and(|g| Arc::ptr_eq(g, &self.gate))
                {
                    gates.remove(&self.tenant);
                }
            }
        }
    }
}

impl Tenants {
    /// `hosted` empty means every tenant is served.
    pub fn new(multi_tenant: bool, hosted: Vec<TenantId>) -> Self {
        Self {
            multi_tenant,
            hosted,
            gates: Arc::default(),
            shutting_down: AtomicBool::new(false),
            streams: Arc::default(),
            routing: None,
        }
    }

    /// Refuse tenants the (strict) storage routes do not name.
    pub fn with_routing(mut self, routing: Option<Arc<crate::store::routed::Routing>>) -> Self {
        self.routing = routing;
        self
    }

    /// With strict storage routes, refuse a tenant no route names.
    ///
    /// # Errors
    ///
    /// [`ApiError::TenantNotRouted`].
    pub fn check_routed(&self, tenant: &TenantId) -> Result<(), ApiError> {
        if self.routing.as_ref().is_some_and(|r| !r.admits(tenant)) {
            return Err(ApiError::TenantNotRouted(tenant.clone()));
        }
        Ok(())
    }

    /// Whether `tenant`'s data is in a log of its own (not in the shared log the state index
    /// follows).
    pub fn is_routed(&self, tenant: &TenantId) -> bool {
        self.routing.as_ref().is_some_and(|r| r.is_routed(tenant))
    }

    /// Take a place for an event stream of `tenant`: at most `per_tenant` of one tenant and
    /// `total` of all tenants at once.
    ///
    /// # Errors
    ///
    /// [`ApiError::TooManyStreams`] naming the bound that is reached.
    pub fn open_stream(
        &self,
        tenant: &TenantId,
        per_tenant: usize,
        total: usize,
    ) -> Result<StreamSlot, ApiError> {
        let mut counts = self.streams.lock();
        if counts.total >= total {
            return Err(ApiError::TooManyStreams {
                scope: "host",
                limit: total,
            });
        }
        let n = counts.per_tenant.get(tenant).copied().unwrap_or(0);
        if n >= per_tenant {
            return Err(ApiError::TooManyStreams {
                scope: "tenant",
                limit: per_tenant,
            });
        }
        counts.per_tenant.insert(tenant.clone(), n + 1);
        counts.total += 1;
        Ok(StreamSlot {
            tenant: tenant.clone(),
            streams: self.streams.clone(),
        })
    }

    /// Event streams open now: `(of tenant, in all)`.
    pub fn open_streams(&self, tenant: &TenantId) -> (usize, usize) {
        let counts = self.streams.lock();
        (
            counts.per_tenant.get(tenant).copied().unwrap_or(0),
            counts.total,
        )
    }

    /// Record that `tenant` has accepted work here (an accepted command, or data it read): it is
    /// listed by [`Tenants::statuses`] from now on.
    pub fn accepted(&self, tenant: &TenantId) {
        let gate = self.gates.lock().entry(tenant.clone()).or_default().clone();
        gate.known.store(true, Ordering::SeqCst);
        gate.last_activity
            .store(Utc::now().timestamp_millis(), Ordering::Relaxed);
    }

    /// The tenant of a request: `x-tenant-id`, validated; absent means the single tenant unless
    /// the host is multi-tenant. Records the request as the latest activity of a tenant already
    /// in the table (and adds none).
    ///
    /// # Errors
    ///
    /// [`ApiError::MissingTenant`], [`ApiError::Invalid`] for a malformed id,
    /// [`ApiError::TenantNotHosted`] for a tenant outside the configured list.
    pub fn resolve(&self, headers: &HeaderMap) -> Result<TenantId, ApiError> {
        let tenant = match headers.get(TENANT_HEADER) {
            None if self.multi_tenant => return Err(ApiError::MissingTenant),
            None => TenantId::single(),
            Some(v) => {
                let v = v
                    .to_str()
                    .map_err(|_| ApiError::BadRequest("x-tenant-id is not visible ASCII".into()))?;
                let t = TenantId::new(v)?;
                if t.is_single() && self.multi_tenant {
                    return Err(ApiError::MissingTenant);
                }
                t
            }
        };
        if !tenant.is_single() && !self.hosted.is_empty() && !self.hosted.contains(&tenant) {
            return Err(ApiError::TenantNotHosted(tenant));
        }
        self.check_routed(&tenant)?;
        if let Some(gate) = self.gates.lock().get(&tenant) {
            gate.last_activity
                .store(Utc::now().timestamp_millis(), Ordering::Relaxed);
        }
        Ok(tenant)
    }

    /// The configured tenants (empty: every tenant is served).
    pub fn hosted(&self) -> &[TenantId] {
        &self.hosted
    }

    /// Let a command of `tenant` in, unless the tenant is drained or the host is shutting down.
    ///
    /// # Errors
    ///
    /// [`ApiError::TenantDraining`] or [`ApiError::ShuttingDown`].
    pub fn admit(&self, tenant: &TenantId) -> Result<InFlight, ApiError> {
        // Count first, check second; `drain` sets the flag first and waits for the count second.
        // With sequentially consistent order a command either sees the flag or is waited for.
        // The count is taken under the table's lock so an idle unknown gate is never removed
        // while a command is being admitted through it.
        let gate = {
            let mut gates = self.gates.lock();
            let gate = gates.entry(tenant.clone()).or_default().clone();
            gate.in_flight.fetch_add(1, Ordering::SeqCst);
            gate
        };
        let guard = InFlight {
            gate,
            tenant: tenant.clone(),
            gates: self.gates.clone(),
        };
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(ApiError::ShuttingDown);
        }
        if guard.gate.draining.load(Ordering::SeqCst) {
            return Err(ApiError::TenantDraining(tenant.clone()));
        }
        Ok(guard)
    }

    /// Refuse `tenant`'s new commands and wait (at most `timeout`) for those in flight. Returns
    /// how many are still running (0 when drained).
    pub async fn drain(&self, tenant: &TenantId, timeout: Duration) -> usize {
        // Flag it under the table's lock: a draining gate is kept, so an unknown tenant's gate
        // cannot be removed between its creation and the flag.
        let gate = {
            let mut gates = self.gates.lock();
            let gate = gates.entry(tenant.clone()).or_default().clone();
            gate.draining.store(true, Ordering::SeqCst);
            gate
        };
        wait_idle(&gate, timeout).await
    }

    /// Wait (at most `timeout`) until `tenant` has no command running here, without refusing
    /// new ones (cluster mode: the tenant was released, so new ones go to its next owner).
    /// Returns how many are still running.
    pub async fn wait_idle(&self, tenant: &TenantId, timeout: Duration) -> usize {
        let gate = self.gates.lock().get(tenant).cloned();
        match gate {
            Some(gate) => wait_idle(&gate, timeout).await,
            None => 0,
        }
    }

    /// Accept `tenant`'s commands again. Returns whether it was drained. A tenant with no
    /// accepted work and nothing running leaves the table again.
    pub fn resume(&self, tenant: &TenantId) -> bool {
        let mut gates = self.gates.lock();
        let Some(gate) = gates.get(tenant).cloned() else {
            return false;
        };
        let was = gate.draining.swap(false, Ordering::SeqCst);
        if !gate.known.load(Ordering::SeqCst) && gate.in_flight.load(Ordering::SeqCst) == 0 {
            gates.remove(tenant);
        }
        was
    }

    /// Whether `tenant`'s commands are refused (drained).
    pub fn is_draining(&self, tenant: &TenantId) -> bool {
        self.gates
            .lock()
            .get(tenant)
            .is_some_and(|g| g.draining.load(Ordering::SeqCst))
    }

    /// The tenant was deleted: drop it from the table (it is listed again after its next
    /// accepted command), and accept its commands again unless `keep_draining`.
    pub fn forget(&self, tenant: &TenantId, keep_draining: bool) {
        let mut gates = self.gates.lock();
        let Some(gate) = gates.get(tenant).cloned() else {
            return;
        };
        gate.known.store(false, Ordering::SeqCst);
        if !keep_draining {
            gate.draining.store(false, Ordering::SeqCst);
            if gate.in_flight.load(Ordering::SeqCst) == 0 {
                gates.remove(tenant);
            }
        }
    }

    /// Refuse every new command from now on (graceful shutdown).
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    /// Whether [`Tenants::begin_shutdown`] was called.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// Wait (at most `timeout` in all) until no tenant has a command in flight. Returns how many
    /// are still running.
    pub async fn wait_all_idle(&self, timeout: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + timeout;
        let gates: Vec<Arc<Gate>> = self.gates.lock().values().cloned().collect();
        let mut left = 0;
        for g in gates {
            left += wait_idle(
                &g,
                deadline.saturating_duration_since(tokio::time::Instant::now()),
            )
            .await;
        }
        left
    }

    /// The configured tenants and every tenant with accepted work (or a drain) since start, in
    /// order; a tenant whose first commands are running now is listed while they run.
    pub fn statuses(&self) -> Vec<TenantStatus> {
        let gates = self.gates.lock();
        let mut out: BTreeMap<TenantId, TenantStatus> = self
            .hosted
            .iter()
            .map(|t| {
                (
                    t.clone(),
                    TenantStatus {
                        tenant: t.clone(),
                        in_flight: 0,
                        draining: false,
                        last_activity: None,
                    },
                )
            })
            .collect();
        for (t, g) in gates.iter() {
            let ms = g.last_activity.load(Ordering::Relaxed);
            out.insert(
                t.clone(),
                TenantStatus {
                    tenant: t.clone(),
                    in_flight: g.in_flight.load(Ordering::SeqCst),
                    draining: g.draining.load(Ordering::SeqCst),
                    last_activity: (ms > 0)
                        .then(|| DateTime::from_timestamp_millis(ms))
                        .flatten(),
                },
            );
        }
        out.into_values().collect()
    }
}

async fn wait_idle(gate: &Gate, timeout: Duration) -> usize {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let notified = gate.idle.notified();
        tokio::pin!(notified);
        // Register before checking, so a notification between the check and the await is kept.
        notified.as_mut().enable();
        let n = gate.in_flight.load(Ordering::SeqCst);
        if n == 0 {
            return 0;
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return gate.in_flight.load(Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(tenant: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(t) = tenant {
            h.insert(TENANT_HEADER, HeaderValue::from_str(t).unwrap());
        }
        h
    }

    #[test]
    fn resolves_by_mode_and_hosted_list() {
        let single = Tenants::new(false, vec![]);
        assert!(single.resolve(&headers(None)).unwrap().is_single());
        assert_eq!(
            single.resolve(&headers(Some("acme"))).unwrap().as_str(),
            "acme"
        );
        assert!(matches!(
            single.resolve(&headers(Some("a.b"))),
            Err(ApiError::Invalid(_))
        ));
        let multi = Tenants::new(true, vec![TenantId::new("acme").unwrap()]);
        assert!(matches!(
            multi.resolve(&headers(None)),
            Err(ApiError::MissingTenant)
        ));
        assert!(matches!(
            multi.resolve(&headers(Some(""))),
            Err(ApiError::MissingTenant)
        ));
        assert!(matches!(
            multi.resolve(&headers(Some("globex"))),
            Err(ApiError::TenantNotHosted(_))
        ));
        assert_eq!(
            multi.resolve(&headers(Some("acme"))).unwrap().as_str(),
            "acme"
        );
        let s = multi.statuses();
        assert_eq!(s.len(), 1);
        assert!(s[0].last_activity.is_none(), "no accepted work yet");
        multi.accepted(&TenantId::new("acme").unwrap());
        assert!(multi.statuses()[0].last_activity.is_some());
    }

    #[test]
    fn made_up_tenants_leave_no_entry_unless_their_work_is_accepted() {
        let tenants = Tenants::new(true, vec![]);
        for i in 0..30 {
            let t = tenants
                .resolve(&headers(Some(&format!("made-up-{i}"))))
                .unwrap();
            let running = tenants.admit(&t).unwrap();
            assert_eq!(tenants.statuses().len(), 1, "listed while running");
            drop(running);
        }
        assert!(tenants.statuses().is_empty(), "{:?}", tenants.statuses());
        assert!(tenants.gates.lock().is_empty());
        let t = TenantId::new("acme").unwrap();
        let running = tenants.admit(&t).unwrap();
        tenants.accepted(&t);
        drop(running);
        let s = tenants.statuses();
        assert_eq!((s.len(), s[0].tenant.as_str()), (1, "acme"));
    }

    #[tokio::test]
    async fn drain_and_resume_of_unknown_tenants_leave_no_entry() {
        let tenants = Tenants::new(false, vec![]);
        for i in 0..20 {
            let t = TenantId::new(format!("made-up-{i}")).unwrap();
            assert!(!tenants.resume(&t), "never drained");
            assert_eq!(tenants.drain(&t, Duration::from_millis(10)).await, 0);
            assert!(tenants
                .statuses()
                .iter()
                .any(|s| s.tenant == t && s.draining));
            assert!(tenants.resume(&t));
        }
        assert!(tenants.statuses().is_empty(), "{:?}", tenants.statuses());
        // A known tenant stays listed after a drain and resume.
        let acme = TenantId::new("acme").unwrap();
        tenants.accepted(&acme);
        tenants.drain(&acme, Duration::from_millis(10)).await;
        tenants.resume(&acme);
        assert_eq!(tenants.statuses().len(), 1);
    }

    #[tokio::test]
    async fn drain_waits_for_in_flight_and_refuses_new_commands() {
        let tenants = Arc::new(Tenants::new(false, vec![]));
        let t = TenantId::new("acme").unwrap();
        let running = tenants.admit(&t).unwrap();
        let drain = {
            let (tenants, t) = (tenants.clone(), t.clone());
            tokio::spawn(async move { tenants.drain(&t, Duration::from_secs(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !drain.is_finished(),
            "drain must wait for the command in flight"
        );
        assert!(matches!(
            tenants.admit(&t),
            Err(ApiError::TenantDraining(_))
        ));
        drop(running);
        assert_eq!(drain.await.unwrap(), 0);
        // Other tenants are unaffected; a resumed tenant is admitted again.
        assert!(tenants.admit(&TenantId::new("globex").unwrap()).is_ok());
        assert!(tenants.resume(&t));
        assert!(tenants.admit(&t).is_ok());
    }

    #[tokio::test]
    async fn drain_times_out_with_the_count_still_running() {
        let tenants = Tenants::new(false, vec![]);
        let t = TenantId::single();
        let _running = tenants.admit(&t).unwrap();
        assert_eq!(tenants.drain(&t, Duration::from_millis(30)).await, 1);
        tenants.begin_shutdown();
        assert!(matches!(
            tenants.admit(&TenantId::new("x").unwrap()),
            Err(ApiError::ShuttingDown)
        ));
        assert_eq!(tenants.wait_all_idle(Duration::from_millis(10)).await, 1);
    }
}
