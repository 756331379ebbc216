//! A misbehaving aggregate component for the host's sandboxing tests.
//!
//! Written against the raw WIT bindings (not the SDK) so it can break the contract on purpose.
//! For ordinary commands it is a tiny counter: state `{"count": n}`, where `n` counts the events
//! applied. Commands (`command-type`, JSON-object payload):
//!
//! | command | payload | behaviour |
//! | --- | --- | --- |
//! | `ok` | `{}` | one event `ok-done` `{}` |
//! | `reject` | `{}` | `rejected("rejected on request")` |
//! | `invalid` | `{}` | `invalid("invalid on request")` |
//! | `spin` | `{}` | loops forever (fuel / epoch deadline) |
//! | `hog` | `{}` | allocates 1 MiB chunks forever and keeps them (memory limit) |
//! | `panic` | `{}` | `panic!("boom")` (a trap) |
//! | `bad-json` | `{}` | one event `corrupt` whose payload is `{not json` |
//! | `many-events` | `{"count": n}` | `n` events `many` `{"i": 0..n}` |
//! | `huge-output` | `{"bytes": n}` | one event `huge` whose payload is exactly `max(n, 11)` bytes of JSON (`{"data":"xx…"}`) |
//! | `whoami` | `{}` | one event `whoami` (see below) |
//! | `stderr` | `{"bytes": n}` | writes `n` bytes (`e`) to stderr, then one event `stderr-done` `{"bytes": n}` |
//!
//! Any other command type is `invalid("unknown command type …")`; a payload that is not a JSON
//! object is `invalid`.
//!
//! `whoami`: every `decide` call, whatever its type, records its tenant-id and aggregate-id in a
//! `static` of the instance. `whoami` answers with the previous call's values (`null` if this is
//! the instance's first `decide`) and the current ones:
//! `{"previous_tenant": "t1"|null, "previous_aggregate": "a1"|null, "tenant": "t2",
//! "aggregate": "a2", "calls": 3}` (`calls` counts `decide` calls of this instance, this one
//! included). The host uses it to prove warm instances are never shared between tenants.
//!
//! `apply` folds events into `{"count": n}`, adding one per event, except:
//! - event type `corrupt` makes `apply` return the state `{not json` (invalid JSON);
//! - event type `apply-error` makes `apply` return `err("apply failed on request")`;
//! - event type `apply-panic` panics (a trap);
//! - a state that is not `{"count": <u64>}` is `err`.

use bindings::{Command, DecideError, Event, Guest};
use serde_json::{json, Value};
use std::sync::Mutex;

/// Generated WIT bindings.
#[allow(clippy::all)]
mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "aggregate",
    });
}

/// The invalid JSON that `bad-json` events and `corrupt` states carry.
pub const NOT_JSON: &str = "{not json";

/// One produced event: `(event-type, payload)`; the schema version is always 1.
pub type RawEvent = (String, String);

/// What a `decide` call can fail with, independent of the WIT types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// `decide-error::rejected`.
    Rejected(String),
    /// `decide-error::invalid`.
    Invalid(String),
}

/// The identity of the previous `decide` call this instance saw.
#[derive(Debug, Default)]
pub struct Tracker {
    previous: Option<(String, String)>,
    calls: u64,
}

impl Tracker {
    /// An empty tracker (no call seen yet).
    pub const fn new() -> Self {
        Self {
            previous: None,
            calls: 0,
        }
    }

    /// Records a call and returns the previous call's `(tenant, aggregate)` and the number of
    /// calls including this one.
    pub fn observe(&mut self, tenant: &str, aggregate: &str) -> (Option<(String, String)>, u64) {
        self.calls += 1;
        let previous = self
            .previous
            .replace((tenant.to_string(), aggregate.to_string()));
        (previous, self.calls)
    }
}

static TRACKER: Mutex<Tracker> = Mutex::new(Tracker::new());

/// The initial state.
pub fn init() -> String {
    json!({ "count": 0 }).to_string()
}

/// `decide` without WIT types. `tracker` is the instance's [`Tracker`].
pub fn decide(
    tracker: &mut Tracker,
    command_type: &str,
    payload: &str,
    tenant: &str,
    aggregate: &str,
) -> Result<Vec<RawEvent>, Refusal> {
    let (previous, calls) = tracker.observe(tenant, aggregate);
    let payload: Value = serde_json::from_str(payload)
        .map_err(|e| Refusal::Invalid(format!("payload is not JSON: {e}")))?;
    if !payload.is_object() {
        return Err(Refusal::Invalid("payload must be a JSON object".into()));
    }
    let number = |field: &str| -> Result<u64, Refusal> {
        payload.get(field).and_then(Value::as_u64).ok_or_else(|| {
            Refusal::Invalid(format!(
                "`{command_type}` needs a non-negative integer `{field}`"
            ))
        })
    };
    let event = |event_type: &str, payload: Value| (event_type.to_string(), payload.to_string());

    match command_type {
        "ok" => Ok(vec![event("ok-done", json!({}))]),
        "reject" => Err(Refusal::Rejected("rejected on request".into())),
        "invalid" => Err(Refusal::Invalid("invalid on request".into())),
        "spin" => {
            let mut i: u64 = 0;
            loop {
                i = std::hint::black_box(i.wrapping_add(1));
            }
        }
        "hog" => {
            let mut keep: Vec<Vec<u8>> = Vec::new();
            loop {
                keep.push(vec![1u8; 1 << 20]);
                std::hint::black_box(&keep);
            }
        }
        "panic" => panic!("boom"),
        "bad-json" => Ok(vec![("corrupt".to_string(), NOT_JSON.to_string())]),
        "many-events" => {
            let count = number("count")?;
            Ok((0..count)
                .map(|i| event("many", json!({ "i": i })))
                .collect())
        }
        "huge-output" => {
            let bytes = number("bytes")?;
            let bytes = usize::try_from(bytes)
                .map_err(|_| Refusal::Invalid("`bytes` is too large".into()))?;
            // `{"data":""}` is 11 bytes; pad the string to reach `bytes` exactly.
            let data = "x".repeat(bytes.saturating_sub(11));
            Ok(vec![(
                "huge".to_string(),
                format!(r#"{{"data":"{data}"}}"#),
            )])
        }
        "whoami" => {
            let (previous_tenant, previous_aggregate) = match previous {
                Some((t, a)) => (Value::String(t), Value::String(a)),
                None => (Value::Null, Value::Null),
            };
            Ok(vec![event(
                "whoami",
                json!({
                    "previous_tenant": previous_tenant,
                    "previous_aggregate": previous_aggregate,
                    "tenant": tenant,
                    "aggregate": aggregate,
                    "calls": calls,
                }),
            )])
        }
        "stderr" => {
            let bytes = number("bytes")?;
            write_stderr(bytes);
            Ok(vec![event("stderr-done", json!({ "bytes": bytes }))])
        }
        other => Err(Refusal::Invalid(format!("unknown command type `{other}`"))),
    }
}

fn write_stderr(bytes: u64) {
    use std::io::Write;
    let chunk = [b'e'; 4096];
    let mut stderr = std::io::stderr().lock();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        // Ignore errors: a host that closes or caps stderr must not turn this into a trap.
        if stderr.write_all(&chunk[..n]).is_err() {
            return;
        }
        left -= n as u64;
    }
    let _ = stderr.flush();
}

/// `apply` without WIT types: `events` are `(event-type, payload)`.
pub fn apply<'a>(
    state: &str,
    events: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<String, String> {
    let state: Value = serde_json::from_str(state).map_err(|e| format!("bad state: {e}"))?;
    let mut count = state
        .get("count")
        .and_then(Value::as_u64)
        .ok_or_else(|| format!("bad state: {state}"))?;
    for (event_type, _payload) in events {
        match event_type {
            "corrupt" => return Ok(NOT_JSON.to_string()),
            "apply-error" => return Err("apply failed on request".into()),
            "apply-panic" => panic!("boom in apply"),
            _ => count += 1,
        }
    }
    Ok(json!({ "count": count }).to_string())
}

struct Hostile;

impl Guest for Hostile {
    fn init() -> String {
        init()
    }

    fn decide(state: String, command: Command) -> Result<Vec<Event>, DecideError> {
        let _ = state;
        let mut tracker = TRACKER.lock().unwrap_or_else(|e| e.into_inner());
        let result = decide(
            &mut tracker,
            &command.command_type,
            &command.payload,
            &command.tenant_id,
            &command.aggregate_id,
        );
        drop(tracker);
        match result {
            Ok(events) => Ok(events
                .into_iter()
                .map(|(event_type, payload)| Event {
                    event_type,
                    schema_version: 1,
                    payload,
                })
                .collect()),
            Err(Refusal::Rejected(m)) => Err(DecideError::Rejected(m)),
            Err(Refusal::Invalid(m)) => Err(DecideError::Invalid(m)),
        }
    }

    fn apply(state: String, events: Vec<Event>) -> Result<String, String> {
        apply(
            &state,
            events
                .iter()
                .map(|e| (e.event_type.as_str(), e.payload.as_str())),
        )
    }
}

bindings::export!(Hostile with_types_in bindings);

#[cfg(test)]
mod tests {
    use super::*;

    fn run(command_type: &str, payload: &str) -> Result<Vec<RawEvent>, Refusal> {
        decide(&mut Tracker::new(), command_type, payload, "t", "a")
    }

    #[test]
    fn ok_is_a_counter() {
        assert_eq!(init(), r#"{"count":0}"#);
        let events = run("ok", "{}").unwrap();
        assert_eq!(events, vec![("ok-done".to_string(), "{}".to_string())]);
        let state = apply(
            &init(),
            events.iter().map(|(t, p)| (t.as_str(), p.as_str())),
        );
        assert_eq!(state.unwrap(), r#"{"count":1}"#);
        assert_eq!(
            apply(r#"{"count":4}"#, [("ok-done", "{}"), ("many", "{}")]).unwrap(),
            r#"{"count":6}"#
        );
    }

    #[test]
    fn refusals() {
        assert_eq!(
            run("reject", "{}"),
            Err(Refusal::Rejected("rejected on request".into()))
        );
        assert_eq!(
            run("invalid", "{}"),
            Err(Refusal::Invalid("invalid on request".into()))
        );
        assert_eq!(
            run("nope", "{}"),
            Err(Refusal::Invalid("unknown command type `nope`".into()))
        );
        assert_eq!(
            run("ok", "[]"),
            Err(Refusal::Invalid("payload must be a JSON object".into()))
        );
        assert!(
            matches!(run("ok", "{"), Err(Refusal::Invalid(m)) if m.starts_with("payload is not JSON"))
        );
        assert_eq!(
            run("many-events", "{}"),
            Err(Refusal::Invalid(
                "`many-events` needs a non-negative integer `count`".into()
            ))
        );
    }

    #[test]
    #[should_panic(expected = "boom")]
    fn panic_panics() {
        let _ = run("panic", "{}");
    }

    #[test]
    fn bad_json_and_corrupt_state() {
        let events = run("bad-json", "{}").unwrap();
        assert_eq!(events, vec![("corrupt".to_string(), NOT_JSON.to_string())]);
        assert!(serde_json::from_str::<Value>(&events[0].1).is_err());
        let state = apply(&init(), [("ok-done", "{}"), ("corrupt", "{}")]).unwrap();
        assert_eq!(state, NOT_JSON);
        assert!(serde_json::from_str::<Value>(&state).is_err());
        assert_eq!(
            apply(&init(), [("apply-error", "{}")]),
            Err("apply failed on request".to_string())
        );
        assert!(apply("[]", []).unwrap_err().starts_with("bad state"));
    }

    #[test]
    fn many_events() {
        let events = run("many-events", r#"{"count": 3}"#).unwrap();
        let payloads: Vec<&str> = events.iter().map(|(_, p)| p.as_str()).collect();
        assert_eq!(payloads, [r#"{"i":0}"#, r#"{"i":1}"#, r#"{"i":2}"#]);
        assert!(events.iter().all(|(t, _)| t == "many"));
        assert!(run("many-events", r#"{"count": 0}"#).unwrap().is_empty());
    }

    #[test]
    fn huge_output_has_exact_size() {
        for bytes in [11, 12, 100, 1 << 20] {
            let events = run("huge-output", &format!(r#"{{"bytes": {bytes}}}"#)).unwrap();
            assert_eq!(events.len(), 1);
            assert_eq!(events[0].0, "huge");
            assert_eq!(events[0].1.len(), bytes);
            let v: Value = serde_json::from_str(&events[0].1).unwrap();
            assert!(v["data"].is_string());
        }
        let events = run("huge-output", r#"{"bytes": 0}"#).unwrap();
        assert_eq!(events[0].1, r#"{"data":""}"#);
    }

    #[test]
    fn whoami_reports_the_previous_caller() {
        let mut tracker = Tracker::new();
        let first = decide(&mut tracker, "whoami", "{}", "t1", "a1").unwrap();
        let first: Value = serde_json::from_str(&first[0].1).unwrap();
        assert_eq!(
            first,
            json!({"previous_tenant": null, "previous_aggregate": null,
                   "tenant": "t1", "aggregate": "a1", "calls": 1})
        );
        decide(&mut tracker, "ok", "{}", "t2", "a2").unwrap();
        let third = decide(&mut tracker, "whoami", "{}", "t3", "a3").unwrap();
        assert_eq!(third[0].0, "whoami");
        let third: Value = serde_json::from_str(&third[0].1).unwrap();
        assert_eq!(
            third,
            json!({"previous_tenant": "t2", "previous_aggregate": "a2",
                   "tenant": "t3", "aggregate": "a3", "calls": 3})
        );
        // Failed commands are observed too.
        let _ = decide(&mut tracker, "nope", "{}", "t4", "a4");
        let fifth = decide(&mut tracker, "whoami", "{}", "t5", "a5").unwrap();
        let fifth: Value = serde_json::from_str(&fifth[0].1).unwrap();
        assert_eq!(fifth["previous_tenant"], "t4");
    }

    #[test]
    fn stderr_succeeds() {
        assert_eq!(
            run("stderr", r#"{"bytes": 0}"#).unwrap(),
            vec![("stderr-done".to_string(), r#"{"bytes":0}"#.to_string())]
        );
    }
}
