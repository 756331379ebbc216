//! The `__NAME__` aggregate: a counter to start from.
//!
//! Build the component with `aggregate-host build` (or `cargo build --target wasm32-wasip2
//! --release`); run the tests natively with `cargo test`.

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

    fn decide(_state: &State, command: Command) -> Result<Vec<Event>, DecideError> {
        match command {
            Command::Add { by } if by > 0 => Ok(vec![Event::Added { by }]),
            Command::Add { by } => Err(DecideError::invalid(format!(
                "by must be positive, got {by}"
            ))),
        }
    }

    fn apply(state: &mut State, event: Event) {
        match event {
            Event::Added { by } => state.value += by,
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
    fn adding_nothing_is_invalid() {
        given::<Counter>([])
            .when(Command::Add { by: 0 })
            .then_invalid_containing("positive");
    }
}
