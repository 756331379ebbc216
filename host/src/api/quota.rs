//! Per-tenant quotas (`quotas` in the configuration): commands per second, as a token bucket,
//! and the number of aggregates a tenant may have.
//!
//! The rate is checked on every command before its body is read; the aggregate count only when
//! the tenant is at its bound, then the command may run only on an aggregate that exists. The
//! count is taken from the event log once per tenant (after its first accepted command on this
//! host; the tenant's next commands wait for it) and kept up to date by counting the aggregates
//! this host's commands create. Commands creating aggregates concurrently can pass the bound
//! together by up to their number, and in
//! cluster mode each host keeps its own buckets (a tenant has one owner at a time, so its
//! commands meet one bucket).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::config::QuotaConfig;
use crate::types::TenantId;

/// Buckets kept before full ones (equal to a new bucket) are swept away; bounds the table
/// against made-up tenant ids.
const SWEEP_ABOVE: usize = 4096;

/// One tenant's limits after overrides (0 = unlimited).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Commands per second.
    pub commands_per_sec: f64,
    /// Bucket size.
    pub burst: u32,
    /// Aggregates.
    pub max_aggregates: u64,
}

/// Which quota refused a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quota {
    /// Commands per second.
    Rate,
    /// Number of aggregates.
    Aggregates,
}

impl Quota {
    /// `rate` or `aggregates` (the problem's `quota` and the metric's label).
    pub fn as_str(self) -> &'static str {
        match self {
            Quota::Rate => "rate",
            Quota::Aggregates => "aggregates",
        }
    }
}

struct Bucket {
    tokens: f64,
    updated: Instant,
    /// The tenant's rate and burst when the bucket was made.
    rate: f64,
    burst: f64,
}

/// Buckets kept at most: beyond it, buckets are dropped (their tenants start full again).
const MAX_BUCKETS: usize = 4 * SWEEP_ABOVE;
/// Shortest time between two sweeps of the bucket table.
const SWEEP_EVERY: Duration = Duration::from_millis(100);

/// Usage of one tenant with accepted work.
#[derive(Default)]
struct Usage {
    /// Aggregates; `None` until counted from the log.
    aggregates: Mutex<Option<u64>>,
    /// Reservations made for the tenant so far (a count from the log taken before a later one
    /// may miss its aggregate).
    generation: AtomicU64,
    /// A count from the log is under way (or done).
    counting: std::sync::atomic::AtomicBool,
    refusals: AtomicU64,
}

/// One tenant's usage as `/admin/tenants` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageReport {
    /// Commands refused by a quota since this host started.
    pub quota_refusals: u64,
    /// Aggregates, when counted.
    pub aggregates: Option<u64>,
    /// The tenant's limits.
    pub limits: Limits,
}

/// What is known of a tenant's aggregate count before a command that may create one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CountView {
    /// The kept count, when there is one (then no count from the log is needed).
    pub count: Option<u64>,
    /// The tenant's reservation generation when looked at (tenants with accepted work).
    generation: Option<u64>,
}

/// A place for one new aggregate under a tenant's bound, held while the command runs; dropping
/// it frees the place (after [`Quotas::accepted`] counted the aggregate it created).
pub struct Reservation {
    tenant: TenantId,
    pending: Arc<Mutex<HashMap<TenantId, u64>>>,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut pending = self.pending.lock();
        if let Some(n) = pending.get_mut(&self.tenant) {
            *n -= 1;
            if *n == 0 {
                pending.remove(&self.tenant);
            }
        }
    }
}

/// Buckets and counts of every tenant.
pub struct Quotas {
    config: QuotaConfig,
    /// Whether counts from the log are kept (single host); in cluster mode other hosts create
    /// aggregates too, so each check counts from the log.
    keep_counts: bool,
    buckets: Mutex<(HashMap<TenantId, Bucket>, Option<Instant>)>,
    usage: Mutex<HashMap<TenantId, Arc<Usage>>>,
    /// Reservations in flight per tenant (only tenants with some).
    pending: Arc<Mutex<HashMap<TenantId, u64>>>,
}

impl Quotas {
    /// Quotas from the configuration; `keep_counts` false in cluster mode.
    pub fn new(config: QuotaConfig, keep_counts: bool) -> Self {
        Self {
            config,
            keep_counts,
            buckets: Mutex::default(),
            usage: Mutex::default(),
            pending: Arc::default(),
        }
    }

    /// The limits of `tenant`.
    pub fn limits(&self, tenant: &TenantId) -> Limits {
        let o = self.config.tenants.get(tenant);
        let commands_per_sec = o
            .and_then(|o| o.commands_per_sec)
            .unwrap_or(self.config.commands_per_sec);
        let burst = o.and_then(|o| o.burst).unwrap_or(self.config.burst);
        let burst = if burst == 0 {
            commands_per_sec.ceil().max(1.0) as u32
        } else {
            burst
        };
        Limits {
            commands_per_sec,
            burst,
            max_aggregates: o
                .and_then(|o| o.max_aggregates)
                .unwrap_or(self.config.max_aggregates),
        }
    }

    /// Take one command from `tenant`'s bucket.
    ///
    /// # Errors
    ///
    /// The time after which a command will be admitted again (whole seconds, at least one, as
    /// `Retry-After` counts them).
    pub fn take(&self, tenant: &TenantId) -> Result<(), Duration> {
        let limits = self.limits(tenant);
        if limits.commands_per_sec <= 0.0 {
            return Ok(());
        }
        let now = Instant::now();
        let burst = f64::from(limits.burst);
        let mut guard = self.buckets.lock();
        let (buckets, last_sweep) = &mut *guard;
        if buckets.len() >= SWEEP_ABOVE
            && !buckets.contains_key(tenant)
            && last_sweep.is_none_or(|t| now.duration_since(t) >= SWEEP_EVERY)
        {
            *last_sweep = Some(now);
            // A bucket refilled to the brim is the same as none.
            buckets.retain(|_, b| {
                b.tokens + now.duration_since(b.updated).as_secs_f64() * b.rate < b.burst
            });
        }
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(tenant) {
            // Made-up tenants filled the table: drop some buckets (their tenants start full).
            let drop: Vec<TenantId> = buckets.keys().take(SWEEP_ABOVE).cloned().collect();
            for t in drop {
                buckets.remove(&t);
            }
        }
        let b = buckets.entry(tenant.clone()).or_insert(Bucket {
            tokens: burst,
            updated: now,
            rate: limits.commands_per_sec,
            burst,
        });
        let refill = now.duration_since(b.updated).as_secs_f64() * limits.commands_per_sec;
        b.tokens = (b.tokens + refill).min(burst);
        b.updated = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            // The rate is at least MIN_RATE (configuration), so this is at most 1000 s.
            let wait = ((1.0 - b.tokens) / limits.commands_per_sec).clamp(1.0, 86_400.0);
            Err(Duration::from_secs(wait.ceil() as u64))
        }
    }

    /// Whether the aggregate bound of `tenant` is on.
    pub fn bounds_aggregates(&self, tenant: &TenantId) -> bool {
        self.limits(tenant).max_aggregates > 0
    }

    /// What is known of `tenant`'s aggregate count; when `count` is `None` the caller counts
    /// from the log and passes that to [`Quotas::reserve`].
    pub fn count_view(&self, tenant: &TenantId) -> CountView {
        match self.usage.lock().get(tenant) {
            Some(u) => CountView {
                count: *u.aggregates.lock(),
                generation: Some(u.generation.load(Ordering::SeqCst)),
            },
            None => CountView {
                count: None,
                generation: None,
            },
        }
    }

    /// Take a place for one new aggregate of `tenant`: `view` from [`Quotas::count_view`] taken
    /// before `listed` (the count from the log, when the view had none) was read.
    ///
    /// # Errors
    ///
    /// The bound, when the tenant's aggregates and the places already taken reach it.
    pub fn reserve(
        &self,
        tenant: &TenantId,
        view: CountView,
        listed: u64,
    ) -> Result<Reservation, u64> {
        let max = self.limits(tenant).max_aggregates;
        let usage = self.usage.lock().get(tenant).cloned();
        let mut pending = self.pending.lock();
        let in_flight = pending.get(tenant).copied().unwrap_or(0);
        let count = match (&usage, view.count) {
            (_, Some(n)) => usage
                .as_ref()
                .and_then(|u| *u.aggregates.lock())
                .unwrap_or(n),
            (Some(u), None) => {
                let mut kept = u.aggregates.lock();
                // Exact when no creation of the tenant ran since the view: keep it from now on.
                if self.keep_counts
                    && in_flight == 0
                    && view.generation == Some(u.generation.load(Ordering::SeqCst))
                {
                    kept.get_or_insert(listed);
                }
                kept.unwrap_or(listed)
            }
            (None, None) => listed,
        };
        if max > 0 && count + in_flight >= max {
            return Err(max);
        }
        pending.insert(tenant.clone(), in_flight + 1);
        if let Some(u) = &usage {
            u.generation.fetch_add(1, Ordering::SeqCst);
        }
        Ok(Reservation {
            tenant: tenant.clone(),
            pending: self.pending.clone(),
        })
    }

    /// A command of `tenant` was accepted; `created` when it created its aggregate. Returns
    /// whether the caller should count the tenant's aggregates from the log in the background
    /// (for the metrics, once, for a tenant without an aggregate bound: a bounded tenant is
    /// counted exactly by [`Quotas::reserve`]).
    pub fn accepted(&self, tenant: &TenantId, created: bool) -> bool {
        let usage = self.usage.lock().entry(tenant.clone()).or_default().clone();
        let mut n = usage.aggregates.lock();
        match n.as_mut() {
            Some(n) => {
                *n += u64::from(created);
                false
            }
            None => {
                self.keep_counts
                    && !self.bounds_aggregates(tenant)
                    && !usage.counting.swap(true, Ordering::SeqCst)
            }
        }
    }

    /// Counting `tenant`'s aggregates failed; the next accepted command tries again.
    pub fn count_failed(&self, tenant: &TenantId) {
        if let Some(u) = self.usage.lock().get(tenant) {
            u.counting.store(false, Ordering::SeqCst);
        }
    }

    /// Record the count of `tenant`'s aggregates read from the log in the background, unless one
    /// is kept already. Approximate by the aggregates created while it was read (metrics only).
    pub fn record_count(&self, tenant: &TenantId, count: u64) {
        if let Some(u) = self.usage.lock().get(tenant) {
            u.aggregates.lock().get_or_insert(count);
        }
    }

    /// A quota refused a command of `tenant`; counted only for a tenant with accepted work.
    pub fn refused(&self, tenant: &TenantId) {
        if let Some(u) = self.usage.lock().get(tenant) {
            u.refusals.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Usage of a tenant with accepted work.
    pub fn report(&self, tenant: &TenantId) -> UsageReport {
        let usage = self.usage.lock().get(tenant).cloned();
        UsageReport {
            quota_refusals: usage
                .as_ref()
                .map_or(0, |u| u.refusals.load(Ordering::Relaxed)),
            aggregates: usage.and_then(|u| *u.aggregates.lock()),
            limits: self.limits(tenant),
        }
    }

    /// The tenant was deleted: forget its bucket and usage.
    pub fn forget(&self, tenant: &TenantId) {
        self.buckets.lock().0.remove(tenant);
        self.usage.lock().remove(tenant);
    }

    /// Kept aggregate counts of every tenant with accepted work (for the metrics).
    pub fn counted(&self) -> Vec<(TenantId, u64)> {
        self.usage
            .lock()
            .iter()
            .filter_map(|(t, u)| (*u.aggregates.lock()).map(|n| (t.clone(), n)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TenantQuota;

    fn t(s: &str) -> TenantId {
        TenantId::new(s).unwrap()
    }

    #[test]
    fn a_burst_over_the_rate_is_refused_with_a_wait_and_other_tenants_are_not() {
        let mut config = QuotaConfig {
            commands_per_sec: 2.0,
            burst: 3,
            ..QuotaConfig::default()
        };
        config.tenants.insert(
            t("big"),
            TenantQuota {
                commands_per_sec: Some(0.0),
                ..TenantQuota::default()
            },
        );
        config.tenants.insert(
            t("slow"),
            TenantQuota {
                commands_per_sec: Some(0.001),
                burst: Some(1),
                ..TenantQuota::default()
            },
        );
        let q = Quotas::new(config, true);
        for _ in 0..3 {
            q.take(&t("acme")).unwrap();
        }
        assert_eq!(q.take(&t("acme")).unwrap_err(), Duration::from_secs(1));
        q.take(&t("globex")).unwrap();
        for _ in 0..100 {
            q.take(&t("big")).unwrap();
        }
        assert_eq!(q.limits(&t("big")).commands_per_sec, 0.0);
        q.take(&t("slow")).unwrap();
        assert_eq!(q.take(&t("slow")).unwrap_err(), Duration::from_secs(1000));
    }

    #[test]
    fn the_bucket_table_stays_bounded_by_made_up_tenants() {
        // A slow rate: no bucket refills while the made-up tenants arrive.
        let q = Quotas::new(
            QuotaConfig {
                commands_per_sec: 0.01,
                burst: 1,
                ..QuotaConfig::default()
            },
            true,
        );
        for i in 0..3 * MAX_BUCKETS {
            let _ = q.take(&t(&format!("made-up-{i}")));
        }
        assert!(q.buckets.lock().0.len() <= MAX_BUCKETS);
    }

    #[test]
    fn aggregates_are_bounded_also_when_created_concurrently() {
        let q = Quotas::new(
            QuotaConfig {
                max_aggregates: 2,
                ..QuotaConfig::default()
            },
            true,
        );
        let a = t("acme");
        // Unknown tenant: counted from the log each time, places held by commands in flight.
        let first = q.reserve(&a, q.count_view(&a), 1).unwrap();
        assert_eq!(q.reserve(&a, q.count_view(&a), 1).err(), Some(2));
        // It creates its aggregate and is accepted; not counted yet (a bounded tenant is counted
        // by a reservation, not in the background).
        assert!(!q.accepted(&a, true));
        drop(first);
        // A quiet tenant: the count from the log is kept.
        let view = q.count_view(&a);
        assert_eq!(view.count, None);
        let r = q.reserve(&a, view, 1).unwrap();
        assert_eq!(q.count_view(&a).count, Some(1));
        // Two places: 1 kept + 1 in flight reaches the bound.
        assert_eq!(q.reserve(&a, q.count_view(&a), 0).err(), Some(2));
        assert!(!q.accepted(&a, true));
        drop(r);
        assert_eq!(q.count_view(&a).count, Some(2));
        assert_eq!(q.reserve(&a, q.count_view(&a), 0).err(), Some(2));
        q.refused(&a);
        q.refused(&t("stranger"));
        assert_eq!(q.report(&a).quota_refusals, 1);
        assert_eq!(q.report(&t("stranger")).quota_refusals, 0);
        assert!(q.usage.lock().get(&t("stranger")).is_none());
        assert!(q.pending.lock().is_empty());
    }

    #[test]
    fn a_count_from_the_log_older_than_a_creation_is_not_kept() {
        let q = Quotas::new(
            QuotaConfig {
                max_aggregates: 10,
                ..QuotaConfig::default()
            },
            true,
        );
        let a = t("acme");
        q.accepted(&a, true);
        let stale = q.count_view(&a);
        // Another command reserved (and created) while this one read the log.
        q.usage.lock()[&a].generation.fetch_add(1, Ordering::SeqCst);
        let r = q.reserve(&a, stale, 1).unwrap();
        assert_eq!(q.count_view(&a).count, None, "a stale count is not kept");
        drop(r);
        let r = q.reserve(&a, q.count_view(&a), 2).unwrap();
        assert_eq!(q.count_view(&a).count, Some(2), "a fresh one is");
        drop(r);
        // In cluster mode counts are never kept.
        let c = Quotas::new(
            QuotaConfig {
                max_aggregates: 10,
                ..QuotaConfig::default()
            },
            false,
        );
        c.accepted(&a, false);
        drop(c.reserve(&a, c.count_view(&a), 3).unwrap());
        assert_eq!(c.count_view(&a).count, None);
    }
}
