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

/// Usage of one tenant with accepted work.
#[derive(Default)]
struct Usage {
    /// Aggregates; `None` until counted from the log.
    aggregates: Mutex<Option<u64>>,
    /// A count from the log is under way (or done).
    counting: std::sync::atomic::AtomicBool,
    /// Woken when a count is recorded or fails.
    counted: tokio::sync::Notify,
    refusals: AtomicU64,
}

/// Longest a command waits for its tenant's aggregates to be counted.
const COUNT_WAIT: Duration = Duration::from_secs(2);

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

/// Buckets and counts of every tenant.
pub struct Quotas {
    config: QuotaConfig,
    buckets: Mutex<HashMap<TenantId, Bucket>>,
    usage: Mutex<HashMap<TenantId, Arc<Usage>>>,
}

impl Quotas {
    /// Quotas from the configuration.
    pub fn new(config: QuotaConfig) -> Self {
        Self {
            config,
            buckets: Mutex::default(),
            usage: Mutex::default(),
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
    /// The time after which a command will be admitted again (at least one second, as
    /// `Retry-After` counts whole seconds).
    pub fn take(&self, tenant: &TenantId) -> Result<(), Duration> {
        let limits = self.limits(tenant);
        if limits.commands_per_sec <= 0.0 {
            return Ok(());
        }
        let now = Instant::now();
        let burst = f64::from(limits.burst);
        let mut buckets = self.buckets.lock();
        if buckets.len() >= SWEEP_ABOVE && !buckets.contains_key(tenant) {
            // A bucket refilled to the brim is the same as none.
            buckets.retain(|_, b| {
                b.tokens + now.duration_since(b.updated).as_secs_f64() * b.rate < b.burst
            });
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
            let wait = (1.0 - b.tokens) / limits.commands_per_sec;
            Err(Duration::from_secs_f64(wait.max(1.0).ceil()))
        }
    }

    /// The aggregates of `tenant` when counted (see [`Quotas::record_count`]).
    pub fn aggregates(&self, tenant: &TenantId) -> Option<u64> {
        let usage = self.usage.lock().get(tenant).cloned()?;
        let n = *usage.aggregates.lock();
        n
    }

    /// Whether `tenant` may create another aggregate, given its count (`None`: not counted).
    pub fn may_create(&self, tenant: &TenantId, count: u64) -> bool {
        let max = self.limits(tenant).max_aggregates;
        max == 0 || count < max
    }

    /// Whether the aggregate bound of `tenant` is on.
    pub fn bounds_aggregates(&self, tenant: &TenantId) -> bool {
        self.limits(tenant).max_aggregates > 0
    }

    /// A command of `tenant` was accepted; `created` when it created its aggregate. Returns
    /// whether the caller should count the tenant's aggregates from the log (once: until
    /// [`Quotas::record_count`], or [`Quotas::count_failed`] to allow another attempt).
    pub fn accepted(&self, tenant: &TenantId, created: bool) -> bool {
        let usage = self.usage.lock().entry(tenant.clone()).or_default().clone();
        let mut n = usage.aggregates.lock();
        match n.as_mut() {
            Some(n) => {
                *n += u64::from(created);
                false
            }
            None => !usage.counting.swap(true, Ordering::SeqCst),
        }
    }

    /// Counting `tenant`'s aggregates failed; the next accepted command tries again.
    pub fn count_failed(&self, tenant: &TenantId) {
        if let Some(u) = self.usage.lock().get(tenant) {
            u.counting.store(false, Ordering::SeqCst);
            u.counted.notify_waiters();
        }
    }

    /// Record the count of `tenant`'s aggregates read from the log, unless one is recorded
    /// already (a count of the log taken after a creation was counted includes it).
    pub fn record_count(&self, tenant: &TenantId, count: u64) {
        let usage = self.usage.lock().entry(tenant.clone()).or_default().clone();
        usage.aggregates.lock().get_or_insert(count);
        usage.counted.notify_waiters();
    }

    /// Wait (up to 2 s) while `tenant`'s aggregates are being counted, so that an aggregate its
    /// command creates is counted once: by the count or by [`Quotas::accepted`] after it.
    pub async fn wait_counted(&self, tenant: &TenantId) {
        let Some(usage) = self.usage.lock().get(tenant).cloned() else {
            return;
        };
        let deadline = tokio::time::Instant::now() + COUNT_WAIT;
        loop {
            let notified = usage.counted.notified();
            if usage.aggregates.lock().is_some() || !usage.counting.load(Ordering::SeqCst) {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return;
            }
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
        self.buckets.lock().remove(tenant);
        self.usage.lock().remove(tenant);
    }

    /// Counted aggregates of every tenant with accepted work (for the metrics).
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
        let q = Quotas::new(config);
        for _ in 0..3 {
            q.take(&t("acme")).unwrap();
        }
        let wait = q.take(&t("acme")).unwrap_err();
        assert_eq!(wait, Duration::from_secs(1));
        q.take(&t("globex")).unwrap();
        for _ in 0..100 {
            q.take(&t("big")).unwrap();
        }
        assert_eq!(q.limits(&t("big")).commands_per_sec, 0.0);
    }

    #[test]
    fn the_bucket_table_stays_bounded_by_made_up_tenants() {
        let q = Quotas::new(QuotaConfig {
            commands_per_sec: 1000.0,
            burst: 1,
            ..QuotaConfig::default()
        });
        for i in 0..3 * SWEEP_ABOVE {
            let _ = q.take(&t(&format!("made-up-{i}")));
            if i % SWEEP_ABOVE == 0 {
                // Let the buckets refill, so they can be swept.
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        assert!(q.buckets.lock().len() <= SWEEP_ABOVE + 1);
    }

    #[test]
    fn aggregates_are_counted_once_then_kept_up_to_date() {
        let q = Quotas::new(QuotaConfig {
            max_aggregates: 2,
            ..QuotaConfig::default()
        });
        let a = t("acme");
        assert!(q.accepted(&a, true), "not counted yet");
        assert!(!q.accepted(&a, true), "counting once");
        q.count_failed(&a);
        assert!(q.accepted(&a, true), "counted again after a failure");
        q.record_count(&a, 1);
        q.record_count(&a, 7);
        assert_eq!(q.aggregates(&a), Some(1));
        assert!(q.may_create(&a, 1));
        assert!(!q.accepted(&a, true));
        assert_eq!(q.aggregates(&a), Some(2));
        assert!(!q.may_create(&a, 2));
        q.refused(&a);
        q.refused(&t("stranger"));
        assert_eq!(q.report(&a).quota_refusals, 1);
        assert_eq!(q.report(&t("stranger")).quota_refusals, 0);
        assert!(q.usage.lock().get(&t("stranger")).is_none());
    }
}
