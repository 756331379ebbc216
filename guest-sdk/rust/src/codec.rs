//! The JSON mapping between an [`Aggregate`]'s Rust types and the component's wire format.
//!
//! These functions are exactly what the exported component runs (the WIT records are converted
//! field by field to and from [`RawEvent`] and the command's `command-type` / `payload`), so
//! native tests that go through them exercise the same mapping as the host will. See the
//! [crate documentation](crate) for the rules.
//!
//! # Examples
//!
//! ```
//! use aggregate_sdk::{codec, Aggregate, DecideError};
//! use serde::{Deserialize, Serialize};
//!
//! struct Tally;
//!
//! #[derive(Default, Serialize, Deserialize)]
//! struct State {
//!     total: u32,
//! }
//!
//! #[derive(Deserialize)]
//! #[serde(tag = "type", rename_all = "snake_case")]
//! enum Command {
//!     Count { by: u32 },
//! }
//!
//! #[derive(Serialize, Deserialize)]
//! #[serde(tag = "type", rename_all = "snake_case")]
//! enum Event {
//!     Counted { by: u32 },
//! }
//!
//! impl Aggregate for Tally {
//!     type State = State;
//!     type Command = Command;
//!     type Event = Event;
//!     fn decide(_: &State, Command::Count { by }: Command) -> Result<Vec<Event>, DecideError> {
//!         Ok(vec![Event::Counted { by }])
//!     }
//!     fn apply(state: &mut State, Event::Counted { by }: Event) {
//!         state.total += by;
//!     }
//! }
//!
//! let state = codec::init::<Tally>();
//! assert_eq!(state, r#"{"total":0}"#);
//!
//! let events = codec::decide::<Tally>(&state, "count", r#"{"by": 2}"#).unwrap();
//! assert_eq!(events[0].event_type, "counted");
//! assert_eq!(events[0].schema_version, 1);
//! assert_eq!(events[0].payload, r#"{"by":2}"#);
//!
//! assert_eq!(codec::apply::<Tally>(&state, &events).unwrap(), r#"{"total":2}"#);
//!
//! let err = codec::decide::<Tally>(&state, "count", "{}").unwrap_err();
//! assert_eq!(err, DecideError::invalid("invalid `count` command: missing field `by`"));
//! ```

use crate::{Aggregate, DecideError};
use serde::Serialize;
use serde_json::Value;
use std::any::type_name;

/// An event as it crosses the component boundary (the WIT `event` record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEvent {
    /// The event's name: the `"type"` tag of the serialized event.
    pub event_type: String,
    /// [`Aggregate::event_schema_version`] of the event.
    pub schema_version: u32,
    /// The serialized event without its `"type"` field: a JSON object.
    pub payload: String,
}

/// The initial state as JSON (the component's `init`).
///
/// # Panics
///
/// If the state does not serialize.
pub fn init<A: Aggregate>() -> String {
    encode_state::<A>(&A::init())
}

/// Decides a command given as `command_type` and JSON `payload` in the JSON `state` (the
/// component's `decide`).
///
/// The payload must be a JSON object; `"type": command_type` is inserted into it (replacing any
/// `"type"` already there) and the object is deserialized into [`Aggregate::Command`]. Failures
/// are [`DecideError::Invalid`].
///
/// # Panics
///
/// If `state` does not deserialize into [`Aggregate::State`], or a produced event does not
/// serialize to a JSON object with a string `"type"` field. The host sees a trap.
pub fn decide<A: Aggregate>(
    state: &str,
    command_type: &str,
    payload: &str,
) -> Result<Vec<RawEvent>, DecideError> {
    let state = decode_state::<A>(state).unwrap_or_else(|e| panic!("{e}"));
    let command = decode_command::<A>(command_type, payload)?;
    let events = A::decide(&state, command)?;
    Ok(events
        .iter()
        .map(|e| encode_event::<A>(e).unwrap_or_else(|e| panic!("{e}")))
        .collect())
}

/// Folds `events`, oldest first, into the JSON `state` and returns the new state as JSON (the
/// component's `apply`). Each event goes through [`decode_event`], so [`Aggregate::upcast`] runs.
pub fn apply<A: Aggregate>(state: &str, events: &[RawEvent]) -> Result<String, String> {
    let mut state = decode_state::<A>(state)?;
    for event in events {
        A::apply(&mut state, decode_event::<A>(event)?);
    }
    Ok(encode_state::<A>(&state))
}

/// Serializes a state to JSON.
///
/// # Panics
///
/// If the state does not serialize (for example a map with non-string keys).
pub fn encode_state<A: Aggregate>(state: &A::State) -> String {
    serde_json::to_string(state)
        .unwrap_or_else(|e| panic!("cannot serialize state {}: {e}", type_name::<A::State>()))
}

/// Deserializes a JSON state.
pub fn decode_state<A: Aggregate>(state: &str) -> Result<A::State, String> {
    serde_json::from_str(state).map_err(|e| {
        format!(
            "state is not a valid {}: {e}",
            short_type_name::<A::State>()
        )
    })
}

/// Builds the command from its type and JSON-object payload, as `decide` does.
pub fn decode_command<A: Aggregate>(
    command_type: &str,
    payload: &str,
) -> Result<A::Command, DecideError> {
    let value: Value = serde_json::from_str(payload).map_err(|e| {
        DecideError::invalid(format!(
            "payload of `{command_type}` command is not JSON: {e}"
        ))
    })?;
    let Value::Object(mut object) = value else {
        return Err(DecideError::invalid(format!(
            "payload of `{command_type}` command must be a JSON object"
        )));
    };
    object.insert("type".into(), Value::String(command_type.into()));
    serde_json::from_value(Value::Object(object.clone())).map_err(|e| {
        let e = e.to_string();
        match bad_field::<A::Command>(&object, &e) {
            Some(field) => DecideError::invalid(format!(
                "invalid `{command_type}` command: field `{field}`: {e}"
            )),
            None => DecideError::invalid(format!("invalid `{command_type}` command: {e}")),
        }
    })
}

/// Which field of `object` made deserialization fail with `error`, when serde's message does not
/// say (a mistyped field inside an internally tagged enum): the field whose removal turns the
/// error into "missing field `<it>`". Runs only on the error path.
fn bad_field<C: serde::de::DeserializeOwned>(
    object: &serde_json::Map<String, Value>,
    error: &str,
) -> Option<String> {
    if error.starts_with("missing field") || error.starts_with("unknown variant") {
        return None;
    }
    object
        .keys()
        .filter(|k| k.as_str() != "type")
        .find(|key| {
            let mut without = object.clone();
            without.remove(key.as_str());
            match serde_json::from_value::<C>(Value::Object(without)) {
                Err(e) => e.to_string().starts_with(&format!("missing field `{key}`")),
                Ok(_) => false,
            }
        })
        .cloned()
}

/// Splits a serializable command into `(command_type, payload)`: the inverse of
/// [`decode_command`]. Useful in tests; [`Aggregate::Command`] itself need not be `Serialize`.
pub fn encode_command<C: Serialize>(command: &C) -> Result<(String, String), String> {
    let (command_type, payload) = split_type(command, "command")?;
    Ok((command_type, payload.to_string()))
}

/// Serializes an event into its wire form: the inverse of [`decode_event`] (without upcasting).
pub fn encode_event<A: Aggregate>(event: &A::Event) -> Result<RawEvent, String> {
    let (event_type, payload) = split_type(event, "event")?;
    Ok(RawEvent {
        event_type,
        schema_version: A::event_schema_version(event),
        payload: payload.to_string(),
    })
}

/// Deserializes an event from its wire form: parses the payload, runs [`Aggregate::upcast`],
/// inserts `"type": event_type` and deserializes into [`Aggregate::Event`].
pub fn decode_event<A: Aggregate>(event: &RawEvent) -> Result<A::Event, String> {
    let name = &event.event_type;
    let payload: Value = serde_json::from_str(&event.payload)
        .map_err(|e| format!("payload of `{name}` event is not JSON: {e}"))?;
    let payload = A::upcast(name, event.schema_version, payload).map_err(|e| {
        format!(
            "cannot upcast `{name}` event from schema version {}: {e}",
            event.schema_version
        )
    })?;
    let Value::Object(mut object) = payload else {
        return Err(format!("payload of `{name}` event must be a JSON object"));
    };
    object.insert("type".into(), Value::String(name.clone()));
    serde_json::from_value(Value::Object(object)).map_err(|e| {
        format!(
            "cannot read `{name}` event (schema version {}): {e}",
            event.schema_version
        )
    })
}

/// Serializes `value`, requires a JSON object with a string `"type"` and splits that off.
fn split_type<T: Serialize>(value: &T, what: &str) -> Result<(String, Value), String> {
    let value = serde_json::to_value(value)
        .map_err(|e| format!("cannot serialize {what} {}: {e}", type_name::<T>()))?;
    let Value::Object(mut object) = value else {
        return Err(format!(
            "{what} {} must serialize to a JSON object, got {value}; \
             use #[serde(tag = \"type\")] on the enum",
            type_name::<T>()
        ));
    };
    match object.remove("type") {
        Some(Value::String(t)) => Ok((t, Value::Object(object))),
        _ => Err(format!(
            "{what} {} must serialize with a string \"type\" field; \
             use #[serde(tag = \"type\")] on the enum",
            type_name::<T>()
        )),
    }
}

fn short_type_name<T>() -> &'static str {
    let full = type_name::<T>();
    full.rsplit("::").next().unwrap_or(full)
}

/// The payload object of an event, for comparing payloads independently of key order.
pub(crate) fn payload_value(event: &RawEvent) -> Value {
    serde_json::from_str(&event.payload).unwrap_or_else(|_| Value::String(event.payload.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};
    use serde_json::json;

    struct Shelf;

    #[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
    struct State {
        books: Vec<String>,
    }

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(tag = "type", rename_all = "snake_case")]
    enum Command {
        Add { title: String },
        Clear,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(tag = "type", rename_all = "snake_case")]
    enum Event {
        Added { title: String },
        Cleared,
    }

    impl Aggregate for Shelf {
        type State = State;
        type Command = Command;
        type Event = Event;

        fn decide(state: &State, command: Command) -> Result<Vec<Event>, DecideError> {
            match command {
                Command::Add { title } if title.is_empty() => {
                    Err(DecideError::invalid("title must not be empty"))
                }
                Command::Add { title } => Ok(vec![Event::Added { title }]),
                Command::Clear if state.books.is_empty() => {
                    Err(DecideError::rejected("nothing to clear"))
                }
                Command::Clear => Ok(vec![Event::Cleared]),
            }
        }

        fn apply(state: &mut State, event: Event) {
            match event {
                Event::Added { title } => state.books.push(title),
                Event::Cleared => state.books.clear(),
            }
        }

        fn event_schema_version(event: &Event) -> u32 {
            match event {
                Event::Added { .. } => 2,
                Event::Cleared => 1,
            }
        }

        // v1 of `added` called the field `name`.
        fn upcast(event_type: &str, version: u32, mut payload: Value) -> Result<Value, String> {
            if event_type == "added" && version == 1 {
                let name = payload
                    .as_object_mut()
                    .and_then(|p| p.remove("name"))
                    .ok_or_else(|| "missing name".to_string())?;
                payload["title"] = name;
            }
            Ok(payload)
        }
    }

    fn raw(event_type: &str, schema_version: u32, payload: &str) -> RawEvent {
        RawEvent {
            event_type: event_type.into(),
            schema_version,
            payload: payload.into(),
        }
    }

    #[test]
    fn init_serializes_default_state() {
        assert_eq!(init::<Shelf>(), r#"{"books":[]}"#);
    }

    #[test]
    fn decide_maps_command_and_events() {
        let events = decide::<Shelf>(r#"{"books":[]}"#, "add", r#"{"title":"Dune"}"#).unwrap();
        assert_eq!(events, vec![raw("added", 2, r#"{"title":"Dune"}"#)]);

        let events = decide::<Shelf>(r#"{"books":["Dune"]}"#, "clear", "{}").unwrap();
        assert_eq!(events, vec![raw("cleared", 1, "{}")]);
    }

    #[test]
    fn decide_passes_domain_errors_through() {
        let err = decide::<Shelf>(r#"{"books":[]}"#, "clear", "{}").unwrap_err();
        assert_eq!(err, DecideError::rejected("nothing to clear"));
        let err = decide::<Shelf>(r#"{"books":[]}"#, "add", r#"{"title":""}"#).unwrap_err();
        assert_eq!(err, DecideError::invalid("title must not be empty"));
    }

    #[test]
    fn command_type_in_payload_is_overridden() {
        let events = decide::<Shelf>(
            r#"{"books":["x"]}"#,
            "clear",
            r#"{"type":"add","title":"ignored"}"#,
        )
        .unwrap();
        assert_eq!(events[0].event_type, "cleared");
    }

    #[test]
    fn malformed_commands_are_invalid() {
        let state = init::<Shelf>();
        let cases = [
            ("add", "{}", "invalid `add` command: missing field `title`"),
            (
                "add",
                r#"{"title": 7}"#,
                "invalid `add` command: field `title`: invalid type: integer `7`, expected a string",
            ),
            (
                "add",
                "[1]",
                "payload of `add` command must be a JSON object",
            ),
            (
                "add",
                "\"x\"",
                "payload of `add` command must be a JSON object",
            ),
        ];
        for (command_type, payload, expected) in cases {
            let err = decide::<Shelf>(&state, command_type, payload).unwrap_err();
            assert_eq!(err, DecideError::invalid(expected), "payload {payload}");
        }

        let err = decide::<Shelf>(&state, "add", "{not json").unwrap_err();
        assert!(
            matches!(&err, DecideError::Invalid(m) if m.starts_with("payload of `add` command is not JSON")),
            "{err:?}"
        );

        let err = decide::<Shelf>(&state, "burn", "{}").unwrap_err();
        assert!(
            matches!(&err, DecideError::Invalid(m) if m.contains("unknown variant `burn`")),
            "{err:?}"
        );
    }

    #[test]
    #[should_panic(expected = "state is not a valid State")]
    fn decide_panics_on_corrupt_state() {
        let _ = decide::<Shelf>("[]", "clear", "{}");
    }

    #[test]
    fn apply_folds_events_and_upcasts_old_versions() {
        let state = apply::<Shelf>(
            &init::<Shelf>(),
            &[
                raw("added", 1, r#"{"name":"Old"}"#),
                raw("added", 2, r#"{"title":"New"}"#),
            ],
        )
        .unwrap();
        assert_eq!(state, r#"{"books":["Old","New"]}"#);

        let state = apply::<Shelf>(&state, &[raw("cleared", 1, "{}")]).unwrap();
        assert_eq!(state, r#"{"books":[]}"#);
    }

    #[test]
    fn apply_reports_bad_input() {
        let state = init::<Shelf>();
        let err = apply::<Shelf>("nope", &[]).unwrap_err();
        assert!(err.starts_with("state is not a valid State"), "{err}");

        let err = apply::<Shelf>(&state, &[raw("added", 2, "not json")]).unwrap_err();
        assert!(
            err.starts_with("payload of `added` event is not JSON"),
            "{err}"
        );

        let err = apply::<Shelf>(&state, &[raw("added", 2, "[]")]).unwrap_err();
        assert_eq!(err, "payload of `added` event must be a JSON object");

        let err = apply::<Shelf>(&state, &[raw("added", 1, "{}")]).unwrap_err();
        assert_eq!(
            err,
            "cannot upcast `added` event from schema version 1: missing name"
        );

        let err = apply::<Shelf>(&state, &[raw("exploded", 1, "{}")]).unwrap_err();
        assert!(
            err.starts_with("cannot read `exploded` event (schema version 1): unknown variant"),
            "{err}"
        );
    }

    #[test]
    fn encode_and_decode_round_trip() {
        let raw_event = encode_event::<Shelf>(&Event::Added { title: "T".into() }).unwrap();
        assert_eq!(raw_event, raw("added", 2, r#"{"title":"T"}"#));
        assert_eq!(
            decode_event::<Shelf>(&raw_event).unwrap(),
            Event::Added { title: "T".into() }
        );

        let (command_type, payload) = encode_command(&Command::Add { title: "T".into() }).unwrap();
        assert_eq!(
            (command_type.as_str(), payload.as_str()),
            ("add", r#"{"title":"T"}"#)
        );
        assert!(matches!(
            decode_command::<Shelf>(&command_type, &payload).unwrap(),
            Command::Add { title } if title == "T"
        ));
    }

    #[test]
    fn untagged_values_are_refused_by_encode() {
        let err = encode_command(&json!([1, 2])).unwrap_err();
        assert!(err.contains("must serialize to a JSON object"), "{err}");
        let err = encode_command(&json!({"kind": "x"})).unwrap_err();
        assert!(err.contains("string \"type\" field"), "{err}");
    }
}
