//! The Prometheus registry and the host's metrics.
//!
//! | metric | type | labels |
//! | --- | --- | --- |
//! | `aggregate_commands_total` | counter | `aggregate_type`, `tenant_id`, `outcome` |
//! | `aggregate_command_duration_seconds` | histogram | `aggregate_type`, `tenant_id` |
//! | `aggregate_decide_fuel_used` | histogram | `aggregate_type`, `tenant_id` |
//! | `aggregate_version_conflicts_total` | counter | `aggregate_type`, `tenant_id` |
//! | `aggregate_rehydration_duration_seconds` | histogram | `aggregate_type`, `tenant_id` |
//! | `aggregate_hot_cache_total` | counter | `aggregate_type`, `tenant_id`, `result` (`hit`/`miss`) |
//! | `aggregate_limit_breaches_total` | counter | `aggregate_type`, `tenant_id`, `kind` |
//! | `aggregate_tenant_errors_total` | counter | `tenant_id`, `problem` |
//! | `aggregate_tenant_quota_refusals_total` | counter | `tenant_id`, `quota` (`rate`/`aggregates`) |
//! | `aggregate_tenant_aggregates` | gauge | `tenant_id` |
//! | `aggregate_foreign_state_rebuilds_total` | counter | `aggregate_type` |
//! | `aggregate_component_compile_duration_seconds` | histogram | — |
//! | `aggregate_component_deploys_total` | counter | `aggregate_type`, `outcome` |
//! | `aggregate_component_cache_total` | counter | `result` (`compiled`/`artifact`/`compile-failed`/`refusal-remembered`) |
//! | `aggregate_instance_pool_total` | counter | `result` (`hit`/`miss`) |
//! | `aggregate_nats_breaker_state` | gauge (1 for the current state, else 0) | `state` (`closed`/`open`/`half-open`) |
//! | `aggregate_nats_breaker_transitions_total` | counter | `from`, `to` (the same three states) |
//!
//! The single tenant (no `x-tenant-id`) is labelled `=single`: tenant ids are made of
//! `[A-Za-z0-9_-]`, so no real tenant can have that label.
//!
//! Label values grow only from accepted work, so no caller can inflate the series: a tenant is
//! its own label once it has an accepted command or readable data on this host (or is in the
//! configured tenant list), else [`OTHER_TENANT_LABEL`]; an aggregate type is its own label only
//! when it is deployed, else [`UNKNOWN_TYPE_LABEL`].

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use prometheus::{
    exponential_buckets, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::runtime::RuntimeStats;
use crate::service::ServiceObserver;
use crate::store::breaker::{BreakerObserver, BreakerState};
use crate::types::{AggregateRef, AggregateType, TenantId};

/// The label value of a tenant (`=single` for the single tenant), before the known-tenant check
/// of [`Metrics`].
pub fn tenant_label(tenant: &TenantId) -> &str {
    if tenant.is_single() {
        "=single"
    } else {
        tenant.as_str()
    }
}

/// The `tenant_id` label of a tenant with no accepted work on this host yet.
pub const OTHER_TENANT_LABEL: &str = "=other";
/// The `tenant_id` label of a malformed `x-tenant-id`.
pub const INVALID_TENANT_LABEL: &str = "=invalid";
/// The `aggregate_type` label of a type that is not deployed.
pub const UNKNOWN_TYPE_LABEL: &str = "=unknown";

/// The `outcome` label of `aggregate_commands_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandOutcomeLabel {
    /// Decided and appended (possibly no events).
    Accepted,
    /// A command id seen before; the original result was returned.
    Duplicate,
    /// The aggregate refused it (422).
    Rejected,
    /// The command or request was malformed (400).
    Invalid,
    /// A version conflict (409).
    Conflict,
    /// A fuel, memory, time or output limit was breached (422).
    LimitBreach,
    /// The component trapped or broke the contract (500).
    GuestFault,
    /// Storage was unavailable (503).
    Unavailable,
    /// Refused before running: unknown type, tenant denied, draining (4xx/503).
    Refused,
    /// Anything else (500).
    Error,
}

impl CommandOutcomeLabel {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Duplicate => "duplicate",
            Self::Rejected => "rejected",
            Self::Invalid => "invalid",
            Self::Conflict => "conflict",
            Self::LimitBreach => "limit-breach",
            Self::GuestFault => "guest-fault",
            Self::Unavailable => "unavailable",
            Self::Refused => "refused",
            Self::Error => "error",
        }
    }
}

/// Every metric of the host, registered in one [`Registry`].
pub struct Metrics {
    registry: Registry,
    commands: IntCounterVec,
    command_duration: HistogramVec,
    decide_fuel: HistogramVec,
    conflicts: IntCounterVec,
    rehydration: HistogramVec,
    hot_cache: IntCounterVec,
    limit_breaches: IntCounterVec,
    tenant_errors: IntCounterVec,
    quota_refusals: IntCounterVec,
    tenant_aggregates: IntGaugeVec,
    foreign_rebuilds: IntCounterVec,
    compile: Histogram,
    deploys: IntCounterVec,
    component_cache: IntCounterVec,
    instance_pool: IntCounterVec,
    breaker_state: IntGaugeVec,
    breaker_transitions: IntCounterVec,
    process: IntGaugeVec,
    /// Tenants with accepted work: the only tenant ids used as label values.
    known_tenants: parking_lot::RwLock<HashSet<TenantId>>,
}

const TYPE_TENANT: &[&str] = &["aggregate_type", "tenant_id"];

/// Remove every series of `vec` whose `tenant_id` is `label`.
fn remove_series<T: prometheus::core::MetricVecBuilder>(
    vec: &prometheus::core::MetricVec<T>,
    label: &str,
) {
    for family in prometheus::core::Collector::collect(vec) {
        for m in family.get_metric() {
            let labels: std::collections::HashMap<&str, &str> = m
                .get_label()
                .iter()
                .map(|l| (l.name(), l.value()))
                .collect();
            if labels.get("tenant_id") == Some(&label) {
                let _ = vec.remove(&labels);
            }
        }
    }
}

impl Metrics {
    /// Create and register every metric.
    ///
    /// # Panics
    ///
    /// Never: the names and buckets are constants that register once in a fresh registry.
    pub fn new() -> Arc<Self> {
        let registry = Registry::new();
        let secs = |from: f64, n: usize| exponential_buckets(from, 2.0, n).expect("valid buckets");
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let histogram = |name: &str, help: &str, labels: &[&str], buckets: Vec<f64>| {
            let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
                .expect("valid histogram");
            registry
                .register(Box::new(h.clone()))
                .expect("unique metric");
            h
        };
        let commands = counter(
            "aggregate_commands_total",
            "Commands submitted, by aggregate type, tenant and outcome.",
            &["aggregate_type", "tenant_id", "outcome"],
        );
        let command_duration = histogram(
            "aggregate_command_duration_seconds",
            "Time from receiving a command to its answer, including storage.",
            TYPE_TENANT,
            secs(0.000_25, 16),
        );
        let decide_fuel = histogram(
            "aggregate_decide_fuel_used",
            "Fuel one decide call burned.",
            TYPE_TENANT,
            exponential_buckets(1e4, 5.0, 9).expect("valid buckets"),
        );
        let conflicts = counter(
            "aggregate_version_conflicts_total",
            "Appends that met a newer version (each retry counts).",
            TYPE_TENANT,
        );
        let rehydration = histogram(
            "aggregate_rehydration_duration_seconds",
            "Time to rebuild an aggregate's state from its snapshot and events.",
            TYPE_TENANT,
            secs(0.000_1, 16),
        );
        let hot_cache = counter(
            "aggregate_hot_cache_total",
            "Hot-state cache lookups, by result (hit or miss).",
            &["aggregate_type", "tenant_id", "result"],
        );
        let limit_breaches = counter(
            "aggregate_limit_breaches_total",
            "Guest calls that breached a limit, by kind (fuel, memory, timeout, ...).",
            &["aggregate_type", "tenant_id", "kind"],
        );
        let tenant_errors = counter(
            "aggregate_tenant_errors_total",
            "Gateway requests answered with an error, by tenant and problem type.",
            &["tenant_id", "problem"],
        );
        let quota_refusals = counter(
            "aggregate_tenant_quota_refusals_total",
            "Commands refused by a tenant quota, by tenant and quota (rate or aggregates).",
            &["tenant_id", "quota"],
        );
        let tenant_aggregates = IntGaugeVec::new(
            Opts::new(
                "aggregate_tenant_aggregates",
                "Aggregates of each tenant with accepted work on this host (counted from the event log once, then by the commands that create one).",
            ),
            &["tenant_id"],
        )
        .expect("valid gauge");
        registry
            .register(Box::new(tenant_aggregates.clone()))
            .expect("unique metric");
        let foreign_rebuilds = counter(
            "aggregate_foreign_state_rebuilds_total",
            "States built by another component (snapshot or hot cache) that the active component failed on, rebuilt from the events.",
            &["aggregate_type"],
        );
        let compile = Histogram::with_opts(
            HistogramOpts::new(
                "aggregate_component_compile_duration_seconds",
                "Time to validate and compile an uploaded component.",
            )
            .buckets(secs(0.01, 12)),
        )
        .expect("valid histogram");
        registry
            .register(Box::new(compile.clone()))
            .expect("unique metric");
        let deploys = counter(
            "aggregate_component_deploys_total",
            "Component uploads, by aggregate type and outcome.",
            &["aggregate_type", "outcome"],
        );
        let component_cache = counter(
            "aggregate_component_cache_total",
            "Component loads by result: compiled (cache miss), precompiled artifact (hit), compile-failed, or refusal-remembered (the same bytes were refused before: refused again without reading or compiling them).",
            &["result"],
        );
        let instance_pool = counter(
            "aggregate_instance_pool_total",
            "Guest calls by instance source: a warm pooled instance (hit) or a new one (miss).",
            &["result"],
        );
        let breaker_state = IntGaugeVec::new(
            Opts::new(
                "aggregate_nats_breaker_state",
                "State of the breaker in front of NATS: 1 for the current state (closed: commands go through; open: refused at once; half-open: probing), 0 for the others. Absent without NATS.",
            ),
            &["state"],
        )
        .expect("valid gauge");
        registry
            .register(Box::new(breaker_state.clone()))
            .expect("unique metric");
        let process = IntGaugeVec::new(
            Opts::new(
                "aggregate_process",
                "The host process now, by `what`: `tasks` (tokio tasks alive), `event_streams` (event streams open), `resident_bytes` (resident memory, from /proc/self/statm; absent elsewhere), `index_position` (the last log position the state index applied).",
            ),
            &["what"],
        )
        .expect("valid gauge");
        registry
            .register(Box::new(process.clone()))
            .expect("unique metric");
        let breaker_transitions = counter(
            "aggregate_nats_breaker_transitions_total",
            "State changes of the breaker in front of NATS, by previous and new state.",
            &["from", "to"],
        );
        Arc::new(Self {
            process,
            registry,
            commands,
            command_duration,
            decide_fuel,
            conflicts,
            rehydration,
            hot_cache,
            limit_breaches,
            tenant_errors,
            quota_refusals,
            tenant_aggregates,
            foreign_rebuilds,
            compile,
            deploys,
            component_cache,
            instance_pool,
            breaker_state,
            breaker_transitions,
            known_tenants: parking_lot::RwLock::new(HashSet::new()),
        })
    }

    /// Use `tenant` as a label value from now on (it has accepted work, or is configured).
    pub fn know_tenant(&self, tenant: &TenantId) {
        if tenant.is_single() || self.known_tenants.read().contains(tenant) {
            return;
        }
        self.known_tenants.write().insert(tenant.clone());
    }

    /// The label of `tenant`: its id once known ([`Metrics::know_tenant`]), else
    /// [`OTHER_TENANT_LABEL`].
    pub fn tenant_label<'a>(&self, tenant: &'a TenantId) -> &'a str {
        if tenant.is_single() || self.known_tenants.read().contains(tenant) {
            tenant_label(tenant)
        } else {
            OTHER_TENANT_LABEL
        }
    }

    /// The label of a raw `x-tenant-id` value: as [`Metrics::tenant_label`], `=single` when
    /// absent, [`INVALID_TENANT_LABEL`] when malformed.
    pub fn raw_tenant_label<'a>(&self, raw: Option<&'a str>) -> &'a str {
        match raw {
            None | Some("") => "=single",
            Some(t) => match TenantId::new(t) {
                Err(_) => INVALID_TENANT_LABEL,
                Ok(id) if self.known_tenants.read().contains(&id) => t,
                Ok(_) => OTHER_TENANT_LABEL,
            },
        }
    }

    /// Count a command and its duration. `ty` is a label value: the aggregate type when it is
    /// deployed, else [`UNKNOWN_TYPE_LABEL`] (the caller knows which).
    pub fn command(
        &self,
        ty: &str,
        tenant: &TenantId,
        outcome: CommandOutcomeLabel,
        elapsed: Duration,
    ) {
        let t = self.tenant_label(tenant);
        self.commands
            .with_label_values(&[ty, t, outcome.as_str()])
            .inc();
        self.command_duration
            .with_label_values(&[ty, t])
            .observe(elapsed.as_secs_f64());
    }

    /// Commands of `tenant` counted so far (every outcome, every aggregate type); 0 for a tenant
    /// that is not its own label.
    pub fn tenant_commands(&self, tenant: &TenantId) -> u64 {
        let label = self.tenant_label(tenant);
        if label == OTHER_TENANT_LABEL {
            return 0;
        }
        prometheus::core::Collector::collect(&self.commands)
            .iter()
            .flat_map(|family| family.get_metric())
            .filter(|m| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == "tenant_id" && l.value() == label)
            })
            .map(|m| m.get_counter().get_value() as u64)
            .sum()
    }

    /// The tenant was deleted: remove every series labelled with it and stop using it as a label
    /// (until it has accepted work again).
    pub fn forget_tenant(&self, tenant: &TenantId) {
        if tenant.is_single() {
            // `=single` is a fixed label; its series are removed, the label stays usable.
        } else if !self.known_tenants.write().remove(tenant) {
            return;
        }
        let label = tenant_label(tenant);
        remove_series(&self.commands, label);
        remove_series(&self.command_duration, label);
        remove_series(&self.decide_fuel, label);
        remove_series(&self.conflicts, label);
        remove_series(&self.rehydration, label);
        remove_series(&self.hot_cache, label);
        remove_series(&self.limit_breaches, label);
        remove_series(&self.tenant_errors, label);
        remove_series(&self.quota_refusals, label);
        remove_series(&self.tenant_aggregates, label);
    }

    /// Count a command of `tenant` refused by its `quota` (`rate` or `aggregates`).
    pub fn quota_refusal(&self, tenant: &TenantId, quota: &str) {
        self.quota_refusals
            .with_label_values(&[self.tenant_label(tenant), quota])
            .inc();
    }

    /// Set the aggregate count of each tenant with accepted work.
    pub fn sync_tenant_aggregates(&self, counts: &[(TenantId, u64)]) {
        for (tenant, n) in counts {
            let label = self.tenant_label(tenant);
            if label != OTHER_TENANT_LABEL {
                self.tenant_aggregates
                    .with_label_values(&[label])
                    .set(i64::try_from(*n).unwrap_or(i64::MAX));
            }
        }
    }

    /// Count a limit breach of kind `kind` (`fuel`, `memory`, `timeout`, ...).
    pub fn limit_breach(&self, ty: &AggregateType, tenant: &TenantId, kind: &str) {
        self.limit_breaches
            .with_label_values(&[ty.as_str(), self.tenant_label(tenant), kind])
            .inc();
    }

    /// Count an error answer to a tenant's request (`tenant` is a label value, see
    /// [`Metrics::raw_tenant_label`]).
    pub fn tenant_error(&self, tenant: &str, problem: &str) {
        self.tenant_errors
            .with_label_values(&[tenant, problem])
            .inc();
    }

    /// Record a component compile.
    pub fn compiled(&self, elapsed: Duration) {
        self.compile.observe(elapsed.as_secs_f64());
    }

    /// Count a component upload (`outcome`: `deployed`, `unchanged`, or a problem type).
    pub fn deploy(&self, ty: &AggregateType, outcome: &str) {
        self.deploys
            .with_label_values(&[ty.as_str(), outcome])
            .inc();
    }

    /// Set the process gauges (called before each scrape): tokio tasks alive, event streams
    /// open, the state index's position, and the resident memory read from `/proc/self/statm`.
    pub fn sync_process(&self, tasks: usize, event_streams: usize, index_position: Option<u64>) {
        let set = |what: &str, v: i64| self.process.with_label_values(&[what]).set(v);
        set("tasks", tasks as i64);
        set("event_streams", event_streams as i64);
        if let Some(p) = index_position {
            set("index_position", p as i64);
        }
        // statm: size resident shared ... in pages (proc(5)); pages are 4 KiB on the platforms we
        // ship (x86-64, aarch64 Linux with 4 KiB pages).
        if let Some(pages) = std::fs::read_to_string("/proc/self/statm")
            .ok()
            .and_then(|s| s.split_whitespace().nth(1)?.parse::<i64>().ok())
        {
            set("resident_bytes", pages * 4096);
        }
    }

    /// Bring the runtime-wide counters up to `stats` (called before each scrape).
    pub fn sync_runtime(&self, stats: &RuntimeStats) {
        fn catch_up(c: &IntCounter, total: u64) {
            let now = c.get();
            if total > now {
                c.inc_by(total - now);
            }
        }
        catch_up(
            &self.component_cache.with_label_values(&["compiled"]),
            stats.compiles,
        );
        catch_up(
            &self.component_cache.with_label_values(&["artifact"]),
            stats.artifact_loads,
        );
        catch_up(
            &self.component_cache.with_label_values(&["compile-failed"]),
            stats.compile_failures,
        );
        catch_up(
            &self
                .component_cache
                .with_label_values(&["refusal-remembered"]),
            stats.refusals_remembered,
        );
        catch_up(
            &self.instance_pool.with_label_values(&["hit"]),
            stats.pool_hits,
        );
        catch_up(
            &self.instance_pool.with_label_values(&["miss"]),
            stats.instantiations,
        );
    }

    /// Everything in the Prometheus text format.
    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|e| format!("# encode error: {e}\n"))
    }
}

impl BreakerObserver for Metrics {
    fn breaker_transition(&self, from: BreakerState, to: BreakerState) {
        for state in BreakerState::ALL {
            self.breaker_state
                .with_label_values(&[state.as_str()])
                .set(i64::from(state == to));
        }
        if from != to {
            self.breaker_transitions
                .with_label_values(&[from.as_str(), to.as_str()])
                .inc();
        }
    }
}

impl ServiceObserver for Metrics {
    fn decided(&self, aggregate: &AggregateRef, fuel: u64) {
        self.decide_fuel
            .with_label_values(&[
                aggregate.aggregate_type.as_str(),
                self.tenant_label(&aggregate.tenant),
            ])
            .observe(fuel as f64);
    }

    fn hot_cache(&self, aggregate: &AggregateRef, hit: bool) {
        let result = if hit { "hit" } else { "miss" };
        self.hot_cache
            .with_label_values(&[
                aggregate.aggregate_type.as_str(),
                self.tenant_label(&aggregate.tenant),
                result,
            ])
            .inc();
    }

    fn rehydrated(&self, aggregate: &AggregateRef, elapsed: Duration, _events: usize) {
        self.rehydration
            .with_label_values(&[
                aggregate.aggregate_type.as_str(),
                self.tenant_label(&aggregate.tenant),
            ])
            .observe(elapsed.as_secs_f64());
    }

    fn foreign_state_rebuilt(&self, aggregate: &AggregateRef) {
        self.foreign_rebuilds
            .with_label_values(&[aggregate.aggregate_type.as_str()])
            .inc();
    }

    fn conflict(&self, aggregate: &AggregateRef) {
        self.conflicts
            .with_label_values(&[
                aggregate.aggregate_type.as_str(),
                self.tenant_label(&aggregate.tenant),
            ])
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::AggregateId;

    #[test]
    fn renders_names_with_tenant_labels() {
        let m = Metrics::new();
        let ty = AggregateType::new("bank-account").unwrap();
        let acme = TenantId::new("acme").unwrap();
        m.know_tenant(&acme);
        m.command(
            ty.as_str(),
            &acme,
            CommandOutcomeLabel::Accepted,
            Duration::from_millis(3),
        );
        m.command(
            ty.as_str(),
            &TenantId::single(),
            CommandOutcomeLabel::Rejected,
            Duration::from_millis(1),
        );
        let agg = AggregateRef {
            tenant: acme.clone(),
            aggregate_type: ty.clone(),
            aggregate_id: AggregateId::generate(),
        };
        m.decided(&agg, 12_345);
        m.conflict(&agg);
        m.limit_breach(&ty, &acme, "fuel");
        m.sync_runtime(&RuntimeStats {
            compiles: 2,
            pool_hits: 5,
            ..Default::default()
        });
        m.sync_runtime(&RuntimeStats {
            compiles: 3,
            pool_hits: 5,
            ..Default::default()
        });
        m.breaker_transition(BreakerState::Closed, BreakerState::Closed);
        m.breaker_transition(BreakerState::Closed, BreakerState::Open);
        let text = m.render();
        for needle in [
            r#"aggregate_commands_total{aggregate_type="bank-account",outcome="accepted",tenant_id="acme"} 1"#,
            r#"aggregate_commands_total{aggregate_type="bank-account",outcome="rejected",tenant_id="=single"} 1"#,
            r#"aggregate_decide_fuel_used_count{aggregate_type="bank-account",tenant_id="acme"} 1"#,
            r#"aggregate_version_conflicts_total{aggregate_type="bank-account",tenant_id="acme"} 1"#,
            r#"aggregate_limit_breaches_total{aggregate_type="bank-account",kind="fuel",tenant_id="acme"} 1"#,
            r#"aggregate_component_cache_total{result="compiled"} 3"#,
            r#"aggregate_instance_pool_total{result="hit"} 5"#,
            r#"aggregate_nats_breaker_state{state="open"} 1"#,
            r#"aggregate_nats_breaker_state{state="closed"} 0"#,
            r#"aggregate_nats_breaker_state{state="half-open"} 0"#,
            r#"aggregate_nats_breaker_transitions_total{from="closed",to="open"} 1"#,
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
    }

    #[test]
    fn unknown_tenants_share_one_label_until_they_have_accepted_work() {
        let m = Metrics::new();
        let ty = AggregateType::new("bank-account").unwrap();
        for i in 0..50 {
            let t = TenantId::new(format!("made-up-{i}")).unwrap();
            m.command(
                UNKNOWN_TYPE_LABEL,
                &t,
                CommandOutcomeLabel::Refused,
                Duration::from_millis(1),
            );
            m.limit_breach(&ty, &t, "fuel");
            m.tenant_error(
                m.raw_tenant_label(Some(t.as_str())),
                "unknown-aggregate-type",
            );
        }
        m.tenant_error(m.raw_tenant_label(Some("not a tenant!")), "invalid-input");
        let text = m.render();
        assert!(!text.contains("made-up-"), "{text}");
        assert!(text.contains(r#"aggregate_commands_total{aggregate_type="=unknown",outcome="refused",tenant_id="=other"} 50"#), "{text}");
        assert!(
            text.contains(
                r#"aggregate_tenant_errors_total{problem="invalid-input",tenant_id="=invalid"} 1"#
            ),
            "{text}"
        );
        let acme = TenantId::new("made-up-7").unwrap();
        m.know_tenant(&acme);
        m.limit_breach(&ty, &acme, "fuel");
        assert!(m.render().contains(r#"tenant_id="made-up-7""#));
    }
}
