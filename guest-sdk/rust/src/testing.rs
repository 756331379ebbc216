//! Given/when/then tests for an [`Aggregate`], run natively with `cargo test` (no wasm needed).
//!
//! [`given`] takes the history (events already stored), `when` the command, and `then*` assert
//! on the outcome, panicking with a readable report on mismatch. Events are compared by their
//! wire form (type, schema version and payload JSON), so event types need not implement
//! `PartialEq` or `Debug`.
//!
//! - [`Given::when`] calls your `decide`/`apply` directly with typed values.
//! - [`Given::when_raw`] and [`Given::when_encoded`] go through the same JSON mapping the
//!   component uses ([`crate::codec`]): the history is encoded and applied as JSON, the command
//!   is built from a command type and JSON payload, and the produced events are encoded.
//!
//! # Examples
//!
//! ```
//! # use aggregate_sdk::{Aggregate, DecideError};
//! # use serde::{Deserialize, Serialize};
//! # pub struct Account;
//! # #[derive(Default, Serialize, Deserialize)]
//! # pub struct State { balance: i64 }
//! # #[derive(Serialize, Deserialize)]
//! # #[serde(tag = "type", rename_all = "snake_case")]
//! # pub enum Command { Withdraw { amount: i64 } }
//! # #[derive(Serialize, Deserialize)]
//! # #[serde(tag = "type", rename_all = "snake_case")]
//! # pub enum Event { Deposited { amount: i64 }, Withdrawn { amount: i64 } }
//! # impl Aggregate for Account {
//! #     type State = State;
//! #     type Command = Command;
//! #     type Event = Event;
//! #     fn decide(s: &State, c: Command) -> Result<Vec<Event>, DecideError> {
//! #         let Command::Withdraw { amount } = c;
//! #         if amount > s.balance { return Err(DecideError::rejected("insufficient funds")); }
//! #         Ok(vec![Event::Withdrawn { amount }])
//! #     }
//! #     fn apply(s: &mut State, e: Event) {
//! #         match e { Event::Deposited { amount } => s.balance += amount,
//! #                   Event::Withdrawn { amount } => s.balance -= amount }
//! #     }
//! # }
//! use aggregate_sdk::testing::given;
//!
//! given::<Account>([Event::Deposited { amount: 10 }])
//!     .when(Command::Withdraw { amount: 4 })
//!     .then([Event::Withdrawn { amount: 4 }])
//!     .then_state(State { balance: 6 });
//!
//! given::<Account>([])
//!     .when(Command::Withdraw { amount: 4 })
//!     .then_rejected_containing("insufficient");
//!
//! // Through the component's JSON mapping:
//! given::<Account>([Event::Deposited { amount: 10 }])
//!     .when_raw("withdraw", r#"{"amount": 4}"#)
//!     .then([Event::Withdrawn { amount: 4 }]);
//! given::<Account>([])
//!     .when_raw("withdraw", "{}")
//!     .then_invalid_containing("missing field `amount`");
//! ```

use crate::codec::{self, RawEvent};
use crate::{Aggregate, DecideError};
use serde::Serialize;
use serde_json::Value;
use std::fmt::Write as _;

/// Starts a scenario from the aggregate's history (`events`, oldest first).
pub fn given<A: Aggregate>(events: impl IntoIterator<Item = A::Event>) -> Given<A> {
    Given {
        history: events.into_iter().collect(),
    }
}

/// A scenario's history; call one of the `when*` methods next.
#[must_use = "call `when` to run a command"]
pub struct Given<A: Aggregate> {
    history: Vec<A::Event>,
}

impl<A: Aggregate> Given<A> {
    /// The state after applying the history with the typed `apply`.
    pub fn state(self) -> A::State {
        let mut state = A::init();
        for event in self.history {
            A::apply(&mut state, event);
        }
        state
    }

    /// Runs `command` through the typed `decide`, and applies the produced events to the state
    /// with the typed `apply`.
    pub fn when(self, command: A::Command) -> Then<A> {
        let state = self.state();
        let outcome = A::decide(&state, command);
        let (outcome, state_after) = match outcome {
            Ok(events) => {
                let raw = events.iter().map(must_encode::<A>).collect();
                let mut state = state;
                for event in events {
                    A::apply(&mut state, event);
                }
                (Ok(raw), Some(codec::encode_state::<A>(&state)))
            }
            Err(e) => (Err(e), None),
        };
        Then {
            command: "typed command".into(),
            outcome,
            state_after,
            _aggregate: std::marker::PhantomData,
        }
    }

    /// Runs a command given as `command_type` and JSON `payload` through the component's JSON
    /// mapping ([`codec::decide`]); the history and the produced events go through
    /// [`codec::apply`].
    ///
    /// # Panics
    ///
    /// If the history cannot be encoded and applied as JSON.
    pub fn when_raw(self, command_type: &str, payload: &str) -> Then<A> {
        let history: Vec<RawEvent> = self.history.iter().map(must_encode::<A>).collect();
        let state = codec::apply::<A>(&codec::init::<A>(), &history)
            .unwrap_or_else(|e| panic!("given: the history does not apply as JSON: {e}"));
        let outcome = codec::decide::<A>(&state, command_type, payload);
        let state_after = match &outcome {
            Ok(events) => Some(
                codec::apply::<A>(&state, events)
                    .unwrap_or_else(|e| panic!("the produced events do not apply as JSON: {e}")),
            ),
            Err(_) => None,
        };
        Then {
            command: format!("`{command_type}` {payload}"),
            outcome,
            state_after,
            _aggregate: std::marker::PhantomData,
        }
    }

    /// Like [`Given::when_raw`], with the command type and payload taken from a serializable
    /// command (`"type"` becomes the command type, the other fields the payload).
    ///
    /// # Panics
    ///
    /// If `command` does not serialize to a JSON object with a string `"type"` field.
    pub fn when_encoded(self, command: A::Command) -> Then<A>
    where
        A::Command: Serialize,
    {
        let (command_type, payload) =
            codec::encode_command(&command).unwrap_or_else(|e| panic!("when_encoded: {e}"));
        self.when_raw(&command_type, &payload)
    }
}

/// The outcome of a scenario; assert on it with the `then*` methods, which panic on mismatch
/// and return `self` so assertions can be chained.
pub struct Then<A: Aggregate> {
    command: String,
    outcome: Result<Vec<RawEvent>, DecideError>,
    state_after: Option<String>,
    _aggregate: std::marker::PhantomData<fn() -> A>,
}

impl<A: Aggregate> Then<A> {
    /// Asserts that the command produced exactly `expected` (same order, type, schema version
    /// and payload).
    #[track_caller]
    pub fn then(self, expected: impl IntoIterator<Item = A::Event>) -> Self {
        let expected: Vec<RawEvent> = expected.into_iter().map(|e| must_encode::<A>(&e)).collect();
        let actual = match &self.outcome {
            Ok(actual) => actual,
            Err(e) => panic!(
                "when {}: expected {} but decide failed with {e:?}",
                self.command,
                list(&expected)
            ),
        };
        if let Some(diff) = diff_events(&expected, actual) {
            panic!(
                "when {}: events differ\n  expected {}\n  actual   {}\n  {diff}",
                self.command,
                list(&expected),
                list(actual)
            );
        }
        self
    }

    /// Asserts that the command failed with exactly `expected`.
    #[track_caller]
    pub fn then_error(self, expected: DecideError) -> Self {
        match &self.outcome {
            Err(actual) if *actual == expected => {}
            Err(actual) => panic!(
                "when {}: expected error {expected:?}\n  but got error {actual:?}",
                self.command
            ),
            Ok(events) => panic!(
                "when {}: expected error {expected:?}\n  but decide succeeded with {}",
                self.command,
                list(events)
            ),
        }
        self
    }

    /// Asserts that the command was [`DecideError::Rejected`] with a message containing `needle`.
    #[track_caller]
    pub fn then_rejected_containing(self, needle: &str) -> Self {
        self.expect_error_containing("Rejected", needle, |e| {
            matches!(e, DecideError::Rejected(_))
        })
    }

    /// Asserts that the command was [`DecideError::Invalid`] with a message containing `needle`.
    #[track_caller]
    pub fn then_invalid_containing(self, needle: &str) -> Self {
        self.expect_error_containing("Invalid", needle, |e| matches!(e, DecideError::Invalid(_)))
    }

    /// Asserts the state after applying the produced events (compared as JSON).
    #[track_caller]
    pub fn then_state(self, expected: A::State) -> Self {
        let Some(actual) = &self.state_after else {
            panic!(
                "when {}: expected a new state but decide failed with {:?}",
                self.command,
                self.outcome.as_ref().err()
            );
        };
        let expected = codec::encode_state::<A>(&expected);
        let actual_value: Value = serde_json::from_str(actual).expect("state is JSON");
        let expected_value: Value = serde_json::from_str(&expected).expect("state is JSON");
        if actual_value != expected_value {
            panic!(
                "when {}: states differ\n  expected {expected}\n  actual   {actual}",
                self.command
            );
        }
        self
    }

    /// The produced events (decoded again from their wire form), or the error.
    ///
    /// # Panics
    ///
    /// If a produced event does not decode.
    pub fn result(&self) -> Result<Vec<A::Event>, DecideError> {
        match &self.outcome {
            Ok(events) => Ok(events
                .iter()
                .map(|e| codec::decode_event::<A>(e).unwrap_or_else(|e| panic!("{e}")))
                .collect()),
            Err(e) => Err(e.clone()),
        }
    }

    /// The produced events in wire form, or the error.
    pub fn raw_result(&self) -> &Result<Vec<RawEvent>, DecideError> {
        &self.outcome
    }

    /// The state after applying the produced events, or `None` if decide failed.
    ///
    /// # Panics
    ///
    /// If the state does not deserialize.
    pub fn state(&self) -> Option<A::State> {
        self.state_after
            .as_deref()
            .map(|s| codec::decode_state::<A>(s).unwrap_or_else(|e| panic!("{e}")))
    }

    #[track_caller]
    fn expect_error_containing(
        self,
        kind: &str,
        needle: &str,
        is_kind: impl Fn(&DecideError) -> bool,
    ) -> Self {
        match &self.outcome {
            Err(e) if is_kind(e) && e.message().contains(needle) => {}
            Err(e) => panic!(
                "when {}: expected {kind} error containing {needle:?}\n  but got error {e:?}",
                self.command
            ),
            Ok(events) => panic!(
                "when {}: expected {kind} error containing {needle:?}\n  but decide succeeded with {}",
                self.command,
                list(events)
            ),
        }
        self
    }
}

fn must_encode<A: Aggregate>(event: &A::Event) -> RawEvent {
    codec::encode_event::<A>(event).unwrap_or_else(|e| panic!("{e}"))
}

fn show(event: &RawEvent) -> String {
    format!(
        "{} v{} {}",
        event.event_type, event.schema_version, event.payload
    )
}

fn list(events: &[RawEvent]) -> String {
    if events.is_empty() {
        return "no events".into();
    }
    let mut out = format!("{} event(s):", events.len());
    for (i, e) in events.iter().enumerate() {
        let _ = write!(out, "\n    [{i}] {}", show(e));
    }
    out
}

fn diff_events(expected: &[RawEvent], actual: &[RawEvent]) -> Option<String> {
    let len = expected.len().max(actual.len());
    for i in 0..len {
        match (expected.get(i), actual.get(i)) {
            (Some(e), Some(a)) => {
                if e.event_type != a.event_type
                    || e.schema_version != a.schema_version
                    || codec::payload_value(e) != codec::payload_value(a)
                {
                    return Some(format!(
                        "first difference at [{i}]: expected {}, got {}",
                        show(e),
                        show(a)
                    ));
                }
            }
            (Some(e), None) => {
                return Some(format!("missing event [{i}]: {}", show(e)));
            }
            (None, Some(a)) => {
                return Some(format!("unexpected event [{i}]: {}", show(a)));
            }
            (None, None) => unreachable!(),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    struct Lamp;

    #[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
    struct State {
        on: bool,
        switches: u32,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(tag = "type", rename_all = "snake_case")]
    enum Command {
        Switch { on: bool },
    }

    #[derive(Serialize, Deserialize)]
    #[serde(tag = "type", rename_all = "snake_case")]
    enum Event {
        SwitchedOn,
        SwitchedOff,
    }

    impl Aggregate for Lamp {
        type State = State;
        type Command = Command;
        type Event = Event;

        fn decide(
            state: &State,
            Command::Switch { on }: Command,
        ) -> Result<Vec<Event>, DecideError> {
            match (state.on, on) {
                (true, true) => Err(DecideError::rejected("lamp is already on")),
                (false, false) => Err(DecideError::rejected("lamp is already off")),
                (_, true) => Ok(vec![Event::SwitchedOn]),
                (_, false) => Ok(vec![Event::SwitchedOff]),
            }
        }

        fn apply(state: &mut State, event: Event) {
            state.on = matches!(event, Event::SwitchedOn);
            state.switches += 1;
        }
    }

    fn panic_message(f: impl FnOnce() + std::panic::UnwindSafe) -> String {
        let err = std::panic::catch_unwind(f).expect_err("expected a panic");
        err.downcast_ref::<String>()
            .cloned()
            .or_else(|| err.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default()
    }

    #[test]
    fn passing_scenarios() {
        given::<Lamp>([])
            .when(Command::Switch { on: true })
            .then([Event::SwitchedOn])
            .then_state(State {
                on: true,
                switches: 1,
            });
        given::<Lamp>([Event::SwitchedOn])
            .when(Command::Switch { on: true })
            .then_error(DecideError::rejected("lamp is already on"))
            .then_rejected_containing("already on");
        given::<Lamp>([Event::SwitchedOn, Event::SwitchedOff])
            .when_encoded(Command::Switch { on: true })
            .then([Event::SwitchedOn])
            .then_state(State {
                on: true,
                switches: 3,
            });
        given::<Lamp>([])
            .when_raw("switch", r#"{"on": "yes"}"#)
            .then_invalid_containing("expected a boolean");
        given::<Lamp>([])
            .when_raw("switch", "[]")
            .then_error(DecideError::invalid(
                "payload of `switch` command must be a JSON object",
            ));
    }

    #[test]
    fn given_state_and_result_accessors() {
        assert_eq!(
            given::<Lamp>([Event::SwitchedOn]).state(),
            State {
                on: true,
                switches: 1
            }
        );
        let then = given::<Lamp>([]).when_raw("switch", r#"{"on":true}"#);
        assert!(matches!(
            then.result().unwrap().as_slice(),
            [Event::SwitchedOn]
        ));
        assert_eq!(
            then.state(),
            Some(State {
                on: true,
                switches: 1
            })
        );
        let raw = then.raw_result().as_ref().unwrap();
        assert_eq!(raw[0].event_type, "switched_on");
        assert_eq!(raw[0].payload, "{}");
    }

    #[test]
    fn mismatched_events_report_a_diff() {
        let msg = panic_message(|| {
            given::<Lamp>([])
                .when(Command::Switch { on: true })
                .then([Event::SwitchedOff]);
        });
        assert!(msg.contains("events differ"), "{msg}");
        assert!(
            msg.contains(
                "first difference at [0]: expected switched_off v1 {}, got switched_on v1 {}"
            ),
            "{msg}"
        );

        let msg = panic_message(|| {
            given::<Lamp>([])
                .when(Command::Switch { on: true })
                .then([Event::SwitchedOn, Event::SwitchedOff]);
        });
        assert!(
            msg.contains("missing event [1]: switched_off v1 {}"),
            "{msg}"
        );

        let msg = panic_message(|| {
            given::<Lamp>([])
                .when(Command::Switch { on: true })
                .then([]);
        });
        assert!(
            msg.contains("unexpected event [0]: switched_on v1 {}"),
            "{msg}"
        );
    }

    #[test]
    fn wrong_outcome_kind_is_reported() {
        let msg = panic_message(|| {
            given::<Lamp>([])
                .when(Command::Switch { on: false })
                .then([Event::SwitchedOff]);
        });
        assert!(
            msg.contains("decide failed with Rejected(\"lamp is already off\")"),
            "{msg}"
        );

        let msg = panic_message(|| {
            given::<Lamp>([])
                .when(Command::Switch { on: true })
                .then_rejected_containing("already");
        });
        assert!(
            msg.contains("but decide succeeded with 1 event(s)"),
            "{msg}"
        );

        let msg = panic_message(|| {
            given::<Lamp>([])
                .when(Command::Switch { on: false })
                .then_invalid_containing("already");
        });
        assert!(
            msg.contains("expected Invalid error containing \"already\""),
            "{msg}"
        );

        let msg = panic_message(|| {
            given::<Lamp>([])
                .when(Command::Switch { on: false })
                .then_error(DecideError::rejected("other"));
        });
        assert!(
            msg.contains("but got error Rejected(\"lamp is already off\")"),
            "{msg}"
        );

        let msg = panic_message(|| {
            given::<Lamp>([])
                .when(Command::Switch { on: true })
                .then_state(State {
                    on: false,
                    switches: 1,
                });
        });
        assert!(msg.contains("states differ"), "{msg}");
    }
}
