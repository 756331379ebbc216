//! The `__NAME__` aggregate: a counter to start from.
//!
//! Build the component with `aggregate-host build` (or `cargo build --target wasm32-wasip2
//! --release`); run the tests natively with `cargo test`.
//!
//! Arithmetic on the state is checked: an `add` that would overflow the counter is rejected
//! rather than wrapped (`i64` addition wraps in a release build and panics in a debug one).

use aggregate_sdk::{Aggregate, DecideError};
use serde::{Deserialize, Serialize};

/// The aggregate.
pub struct Counter;

/// Its state.
#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// The running total.
    pub value: i64,
}

/// Commands: `add {"by": 2}`.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Command {
    /// Add `by` (positive).
    Add {
        /// How much.
        by: i64,
    },
}

/// Events: `added {"by": 2}`.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// `by` was added.
    Added {
        /// How much.
        by: i64,
    },
}

impl Aggregate for Counter {
    type State = State;
    type Command = Command;
    type Event = Event;

    fn decide(state: &State, command: Command) -> Result<Vec<Event>, DecideError> {
        match command {
            Command::Add { by } if by <= 0 => Err(DecideError::invalid(format!(
                "by must be positive, got {by}"
            ))),
            Command::Add { by } => match state.value.checked_add(by) {
                Some(_) => Ok(vec![Event::Added { by }]),
                None => Err(DecideError::rejected(format!(
                    "counter would overflow: value {}, adding {by}",
                    state.value
                ))),
            },
        }
    }

    fn apply(state: &mut State, event: Event) {
        match event {
            // `decide` never lets an `added` overflow; `apply` cannot return an error, so a
            // history from elsewhere that would overflow stops it with a panic naming the event.
            Event::Added { by } => {
                state.value = state.value.checked_add(by).unwrap_or_else(|| {
                    panic!("counter would overflow: value {}, added {by}", state.value)
                });
            }
        }
    }
}

aggregate_sdk::export_aggregate!(Counter);

#[cfg(test)]
mod tests {
    use super::*;
    use aggregate_sdk::testing::given;

    #[test]
    fn adding_adds() {
        given::<Counter>([Event::Added { by: 1 }])
            .when(Command::Add { by: 2 })
            .then([Event::Added { by: 2 }])
            .then_state(State { value: 3 });
    }

    #[test]
    fn adding_past_the_largest_value_is_rejected() {
        given::<Counter>([Event::Added { by: i64::MAX - 1 }])
            .when(Command::Add { by: 1 })
            .then([Event::Added { by: 1 }])
            .then_state(State { value: i64::MAX });
        given::<Counter>([Event::Added { by: i64::MAX }])
            .when(Command::Add { by: 1 })
            .then_error(DecideError::rejected(
                "counter would overflow: value 9223372036854775807, adding 1",
            ));
    }

    #[test]
    #[should_panic(expected = "counter would overflow: value 9223372036854775807, added 1")]
    fn apply_never_wraps() {
        let _ = given::<Counter>([Event::Added { by: i64::MAX }, Event::Added { by: 1 }]).state();
    }

    #[test]
    fn adding_nothing_is_invalid() {
        given::<Counter>([])
            .when(Command::Add { by: 0 })
            .then_invalid_containing("positive");
    }
}
