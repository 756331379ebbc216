//! A circuit breaker in front of a remote dependency (the NATS connection of the JetStream log).
//!
//! Three states:
//!
//! - **closed**: calls go through. Consecutive failures are counted; at
//!   [`BreakerConfig::failure_threshold`] the breaker opens. A success resets the count.
//! - **open**: calls are refused at once, without touching the dependency. The breaker opens on a
//!   lost connection (reported by the client the moment it happens) or on too many failures.
//! - **half-open**: the dependency looks reachable again (the connection came back, or
//!   [`BreakerConfig::cooldown`] passed since the breaker opened while connected); ordinary calls
//!   are still refused while one probe runs. The probe's success closes the breaker, its failure
//!   opens it again (and the cooldown starts over).
//!
//! The breaker does no I/O and never sleeps: whoever owns the dependency reports connection
//! events, call results and probe results, and asks [`Breaker::probe_due`] when to probe. Every
//! transition is reported to an optional [`BreakerObserver`] (metrics). Time is passed in, so the
//! state machine is tested without waiting.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The state of a [`Breaker`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls are refused at once.
    Open,
    /// Calls are refused while a probe decides between closed and open.
    HalfOpen,
}

impl BreakerState {
    /// Every state, in a fixed order (metrics export one series per state).
    pub const ALL: [BreakerState; 3] = [Self::Closed, Self::Open, Self::HalfOpen];

    /// The state's name: `closed`, `open`, `half-open`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half-open",
        }
    }

    fn to_u8(self) -> u8 {
        match self {
            Self::Closed => 0,
            Self::Open => 1,
            Self::HalfOpen => 2,
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Closed,
            1 => Self::Open,
            _ => Self::HalfOpen,
        }
    }
}

impl std::fmt::Display for BreakerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// When a [`Breaker`] opens and how soon it probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failed calls (errors or timeouts) that open a closed breaker. Default 3.
    pub failure_threshold: u32,
    /// How long an open breaker whose connection is up waits before probing. A reconnect probes
    /// at once. Default 1 s.
    pub cooldown: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 3,
            cooldown: Duration::from_secs(1),
        }
    }
}

/// Told about every state change of a [`Breaker`] (e.g. metrics).
pub trait BreakerObserver: Send + Sync {
    /// The breaker went from `from` to `to` (`from == to` once, when the observer is set, to
    /// report the current state).
    fn breaker_transition(&self, from: BreakerState, to: BreakerState);
}

#[derive(Debug)]
struct Inner {
    state: BreakerState,
    /// Why the breaker is not closed (the last reason it opened).
    reason: Option<String>,
    /// Consecutive failures while closed.
    failures: u32,
    /// When the breaker last opened.
    opened_at: Instant,
    /// Whether the dependency's connection is up, as last reported.
    connected: bool,
}

/// A circuit breaker. See the module docs. Cheap to query: [`Breaker::state`] and
/// [`Breaker::allows`] read one atomic.
pub struct Breaker {
    config: BreakerConfig,
    /// Mirror of `inner.state` for lock-free reads.
    state: AtomicU8,
    /// Incremented each time the breaker closes: a call's failure counts only if the breaker has
    /// not reopened and closed since the call started (a slow call from before an outage must not
    /// reopen a breaker that has just recovered).
    epoch: AtomicU64,
    inner: parking_lot::Mutex<Inner>,
    observer: parking_lot::RwLock<Option<Arc<dyn BreakerObserver>>>,
}

impl std::fmt::Debug for Breaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breaker")
            .field("state", &self.state())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Breaker {
    /// A closed breaker over a connected dependency.
    pub fn closed(config: BreakerConfig) -> Self {
        Self::with(config, BreakerState::Closed, None, true)
    }

    /// An open breaker over a dependency that is not connected yet (a lazy start).
    pub fn open(config: BreakerConfig, reason: impl Into<String>) -> Self {
        Self::with(config, BreakerState::Open, Some(reason.into()), false)
    }

    fn with(
        config: BreakerConfig,
        state: BreakerState,
        reason: Option<String>,
        connected: bool,
    ) -> Self {
        Self {
            config,
            state: AtomicU8::new(state.to_u8()),
            epoch: AtomicU64::new(0),
            inner: parking_lot::Mutex::new(Inner {
                state,
                reason,
                failures: 0,
                opened_at: Instant::now(),
                connected,
            }),
            observer: parking_lot::RwLock::new(None),
        }
    }

    /// The configuration.
    pub fn config(&self) -> BreakerConfig {
        self.config
    }

    /// Report transitions to `observer` from now on; it is told the current state at once.
    pub fn set_observer(&self, observer: Arc<dyn BreakerObserver>) {
        // Transitions happen under the `inner` lock: holding it, no change slips in between.
        let inner = self.inner.lock();
        observer.breaker_transition(inner.state, inner.state);
        *self.observer.write() = Some(observer);
    }

    /// The current state (one atomic read).
    pub fn state(&self) -> BreakerState {
        BreakerState::from_u8(self.state.load(Ordering::Acquire))
    }

    /// True when calls may go through (closed).
    pub fn allows(&self) -> bool {
        self.state() == BreakerState::Closed
    }

    /// Why the breaker is not closed (`None` when closed).
    pub fn reason(&self) -> Option<String> {
        let inner = self.inner.lock();
        (inner.state != BreakerState::Closed)
            .then(|| inner.reason.clone())
            .flatten()
    }

    /// Whether the connection is up, as last reported.
    pub fn connected(&self) -> bool {
        self.inner.lock().connected
    }

    /// A token to pass to [`Breaker::failure`] for a call that starts now.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    fn transition(&self, inner: &mut Inner, to: BreakerState, now: Instant) {
        let from = inner.state;
        if from == to {
            return;
        }
        inner.state = to;
        match to {
            BreakerState::Open => inner.opened_at = now,
            BreakerState::Closed => {
                inner.failures = 0;
                inner.reason = None;
                self.epoch.fetch_add(1, Ordering::AcqRel);
            }
            BreakerState::HalfOpen => {}
        }
        self.state.store(to.to_u8(), Ordering::Release);
        if let Some(observer) = self.observer.read().as_ref() {
            observer.breaker_transition(from, to);
        }
    }

    /// The connection was lost: open at once (from any state).
    pub fn disconnected(&self, reason: impl Into<String>, now: Instant) {
        let mut inner = self.inner.lock();
        inner.connected = false;
        if inner.state != BreakerState::Open {
            inner.reason = Some(reason.into());
            self.transition(&mut inner, BreakerState::Open, now);
        }
    }

    /// The connection is (back) up: an open breaker goes half-open so the owner probes at once.
    pub fn reconnected(&self, now: Instant) {
        let mut inner = self.inner.lock();
        inner.connected = true;
        if inner.state == BreakerState::Open {
            self.transition(&mut inner, BreakerState::HalfOpen, now);
        }
    }

    /// A call succeeded: the failure count starts over. Only probes close an open breaker.
    pub fn success(&self) {
        if self.state() != BreakerState::Closed {
            return;
        }
        let mut inner = self.inner.lock();
        if inner.state == BreakerState::Closed {
            inner.failures = 0;
        }
    }

    /// A call that started at `epoch` ([`Breaker::epoch`]) failed because the dependency did not
    /// answer or failed: count it while closed, and open at the threshold. Failures while open or
    /// half-open, and of calls that started before the breaker last closed, change nothing.
    pub fn failure(&self, reason: impl Into<String>, epoch: u64, now: Instant) {
        let mut inner = self.inner.lock();
        if inner.state != BreakerState::Closed || epoch != self.epoch() {
            return;
        }
        inner.failures += 1;
        if inner.failures >= self.config.failure_threshold.max(1) {
            inner.reason = Some(format!(
                "{} consecutive failures, the last: {}",
                inner.failures,
                reason.into()
            ));
            self.transition(&mut inner, BreakerState::Open, now);
        }
    }

    /// Should the owner probe now? True when half-open, and when open with the connection up and
    /// the cooldown over (the breaker then goes half-open). Call [`Breaker::probe_succeeded`] or
    /// [`Breaker::probe_failed`] with the result.
    pub fn probe_due(&self, now: Instant) -> bool {
        if self.state() == BreakerState::Closed {
            return false;
        }
        let mut inner = self.inner.lock();
        match inner.state {
            BreakerState::Closed => false,
            BreakerState::HalfOpen => true,
            BreakerState::Open => {
                let due = inner.connected
                    && now.saturating_duration_since(inner.opened_at) >= self.config.cooldown;
                if due {
                    self.transition(&mut inner, BreakerState::HalfOpen, now);
                }
                due
            }
        }
    }

    /// The probe succeeded: close (from half-open; an open breaker — the connection dropped
    /// during the probe — stays open).
    pub fn probe_succeeded(&self, now: Instant) {
        let mut inner = self.inner.lock();
        if inner.state == BreakerState::HalfOpen {
            inner.connected = true;
            self.transition(&mut inner, BreakerState::Closed, now);
        }
    }

    /// The probe failed: open again, and wait out the cooldown before the next probe.
    pub fn probe_failed(&self, reason: impl Into<String>, now: Instant) {
        let mut inner = self.inner.lock();
        if inner.state == BreakerState::HalfOpen {
            inner.reason = Some(reason.into());
            self.transition(&mut inner, BreakerState::Open, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder(parking_lot::Mutex<Vec<(BreakerState, BreakerState)>>);

    impl BreakerObserver for Recorder {
        fn breaker_transition(&self, from: BreakerState, to: BreakerState) {
            self.0.lock().push((from, to));
        }
    }

    fn config() -> BreakerConfig {
        BreakerConfig {
            failure_threshold: 3,
            cooldown: Duration::from_millis(500),
        }
    }

    use BreakerState::{Closed, HalfOpen, Open};

    #[test]
    fn a_lost_connection_opens_at_once_and_a_reconnect_probes() {
        let b = Breaker::closed(config());
        let seen = Arc::new(Recorder::default());
        b.set_observer(seen.clone());
        let t0 = Instant::now();
        assert!(b.allows() && !b.probe_due(t0));

        b.disconnected("connection lost", t0);
        assert_eq!(b.state(), Open);
        assert!(!b.allows());
        assert_eq!(b.reason().as_deref(), Some("connection lost"));
        // Not connected: no probe however long it stays open.
        assert!(!b.probe_due(t0 + Duration::from_secs(60)));
        assert_eq!(b.state(), Open);

        b.reconnected(t0 + Duration::from_millis(10));
        assert_eq!(b.state(), HalfOpen);
        assert!(!b.allows(), "half-open refuses ordinary calls");
        assert!(b.probe_due(t0 + Duration::from_millis(10)));
        b.probe_succeeded(t0 + Duration::from_millis(12));
        assert_eq!(b.state(), Closed);
        assert!(b.allows() && b.reason().is_none());

        assert_eq!(
            *seen.0.lock(),
            vec![
                (Closed, Closed),
                (Closed, Open),
                (Open, HalfOpen),
                (HalfOpen, Closed)
            ]
        );
    }

    #[test]
    fn consecutive_failures_open_and_the_cooldown_leads_to_a_probe() {
        let b = Breaker::closed(config());
        let t0 = Instant::now();
        let epoch = b.epoch();
        b.failure("timeout", epoch, t0);
        b.failure("timeout", epoch, t0);
        b.success(); // resets the count
        b.failure("timeout", epoch, t0);
        b.failure("timeout", epoch, t0);
        assert_eq!(b.state(), Closed, "2 consecutive failures are below 3");
        b.failure("no responders", epoch, t0);
        assert_eq!(b.state(), Open);
        assert!(b.reason().unwrap().contains("3 consecutive failures"));
        assert!(b.reason().unwrap().contains("no responders"));

        // Connected all along: probe after the cooldown, not before.
        assert!(!b.probe_due(t0 + Duration::from_millis(499)));
        assert_eq!(b.state(), Open);
        assert!(b.probe_due(t0 + Duration::from_millis(500)));
        assert_eq!(b.state(), HalfOpen);

        // A failed probe opens again and restarts the cooldown.
        let t1 = t0 + Duration::from_millis(510);
        b.probe_failed("still no responders", t1);
        assert_eq!(b.state(), Open);
        assert_eq!(b.reason().as_deref(), Some("still no responders"));
        assert!(!b.probe_due(t1 + Duration::from_millis(100)));
        assert!(b.probe_due(t1 + Duration::from_millis(500)));
        b.probe_succeeded(t1 + Duration::from_millis(501));
        assert_eq!(b.state(), Closed);
    }

    #[test]
    fn stale_failures_and_results_outside_their_state_change_nothing() {
        let b = Breaker::closed(config());
        let t0 = Instant::now();
        let before_outage = b.epoch();
        b.disconnected("lost", t0);
        // Failures while open (calls from before the outage timing out) do not count.
        for _ in 0..5 {
            b.failure("timeout", before_outage, t0);
        }
        b.probe_succeeded(t0); // not half-open: ignored
        assert_eq!(b.state(), Open);
        b.reconnected(t0);
        assert!(b.probe_due(t0));
        b.probe_succeeded(t0);
        assert_eq!(b.state(), Closed);
        // The same old calls finishing after the recovery do not reopen it.
        for _ in 0..5 {
            b.failure("timeout", before_outage, t0);
        }
        assert_eq!(b.state(), Closed);
        // New calls do.
        let now = b.epoch();
        for _ in 0..3 {
            b.failure("timeout", now, t0);
        }
        assert_eq!(b.state(), Open);
        // A disconnect during the probe keeps it open even if the probe then succeeds.
        b.reconnected(t0);
        assert_eq!(b.state(), HalfOpen);
        b.disconnected("lost again", t0);
        b.probe_succeeded(t0);
        assert_eq!(b.state(), Open);
        assert_eq!(b.reason().as_deref(), Some("lost again"));
    }

    #[test]
    fn a_lazy_start_is_open_until_the_first_probe() {
        let b = Breaker::open(config(), "not connected yet");
        let t0 = Instant::now();
        assert_eq!(b.state(), Open);
        assert!(!b.connected());
        assert!(!b.probe_due(t0 + Duration::from_secs(10)));
        b.reconnected(t0);
        assert!(b.probe_due(t0));
        b.probe_succeeded(t0);
        assert!(b.allows());
    }
}
