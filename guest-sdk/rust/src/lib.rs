//! Write an event-sourced aggregate in plain Rust and export it as an Aggregate Host component.
//!
//! An aggregate is a pure decider: it starts from an initial state, turns commands into events
//! (or refuses them), and folds events into state. With this crate you describe those three steps
//! with your own Rust types by implementing [`Aggregate`]; [`export_aggregate!`] turns the type
//! into a component that implements the `aggregate:core/aggregate` WIT world. You never see WIT
//! types or JSON.
//!
//! # How your types map to the wire
//!
//! The host hands the guest JSON text. The SDK maps it to your types with serde:
//!
//! - **State** is serialized as a whole (`init` returns it, `decide` and `apply` receive it).
//! - **Commands** arrive as a `command-type` plus a JSON-object `payload`. The SDK inserts
//!   `"type": <command-type>` into the payload and deserializes the object into
//!   [`Aggregate::Command`], so write commands as an internally tagged enum:
//!   `#[serde(tag = "type", rename_all = "snake_case")]`. A payload that is not a JSON object, or
//!   that does not deserialize (unknown type, missing or mistyped field), is answered with
//!   [`DecideError::Invalid`] carrying serde's message, which names the field.
//! - **Events** are serialized the same way in reverse: the `"type"` field of the serialized
//!   event becomes the WIT `event-type`, the remaining fields become the `payload`, and
//!   [`Aggregate::event_schema_version`] becomes the `schema-version`. Before an event is
//!   deserialized in `apply`, [`Aggregate::upcast`] may rewrite the payload of an older schema
//!   version.
//!
//! Internal errors that a correct host and a correct aggregate never produce (state that does not
//! deserialize in `decide`, an event that does not serialize to a JSON object with a string
//! `"type"`) panic, which the host sees as a trap. `apply` reports such problems through its
//! error result instead.
//!
//! # Examples
//!
//! ```
//! use aggregate_sdk::{Aggregate, DecideError};
//! use serde::{Deserialize, Serialize};
//!
//! pub struct Counter;
//!
//! #[derive(Default, Serialize, Deserialize)]
//! pub struct State {
//!     value: i64,
//! }
//!
//! #[derive(Serialize, Deserialize)]
//! #[serde(tag = "type", rename_all = "snake_case")]
//! pub enum Command {
//!     Add { amount: i64 },
//! }
//!
//! #[derive(Debug, PartialEq, Serialize, Deserialize)]
//! #[serde(tag = "type", rename_all = "snake_case")]
//! pub enum Event {
//!     Added { amount: i64 },
//! }
//!
//! impl Aggregate for Counter {
//!     type State = State;
//!     type Command = Command;
//!     type Event = Event;
//!
//!     fn decide(_state: &State, command: Command) -> Result<Vec<Event>, DecideError> {
//!         match command {
//!             Command::Add { amount } if amount <= 0 => {
//!                 Err(DecideError::invalid("amount must be positive"))
//!             }
//!             Command::Add { amount } => Ok(vec![Event::Added { amount }]),
//!         }
//!     }
//!
//!     fn apply(state: &mut State, event: Event) {
//!         match event {
//!             Event::Added { amount } => state.value += amount,
//!         }
//!     }
//! }
//!
//! // In the component crate (crate-type = ["cdylib", "rlib"]):
//! aggregate_sdk::export_aggregate!(Counter);
//!
//! // In its tests:
//! aggregate_sdk::testing::given::<Counter>([Event::Added { amount: 2 }])
//!     .when(Command::Add { amount: 3 })
//!     .then([Event::Added { amount: 3 }]);
//! ```

#![warn(missing_docs)]

use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt;

pub mod codec;
pub mod testing;

/// The JSON value type used by [`Aggregate::upcast`] (re-exported from `serde_json`).
pub use serde_json::Value;

/// Generated WIT bindings of `aggregate:core/aggregate`. Not part of the public API: use
/// [`export_aggregate!`].
#[doc(hidden)]
#[allow(missing_docs, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "aggregate",
        pub_export_macro: true,
        default_bindings_module: "aggregate_sdk::bindings",
    });
}

/// An event-sourced aggregate: its types and its pure decide/apply logic.
///
/// Implement this on a marker type and export it with [`export_aggregate!`]. See the
/// [crate documentation](crate) for how the associated types map to the JSON on the wire.
///
/// # Examples
///
/// ```
/// use aggregate_sdk::{Aggregate, DecideError};
/// use serde::{Deserialize, Serialize};
///
/// pub struct Light;
///
/// #[derive(Default, Serialize, Deserialize)]
/// pub struct State {
///     on: bool,
/// }
///
/// #[derive(Deserialize)]
/// #[serde(tag = "type", rename_all = "snake_case")]
/// pub enum Command {
///     SwitchOn,
/// }
///
/// #[derive(Serialize, Deserialize)]
/// #[serde(tag = "type", rename_all = "snake_case")]
/// pub enum Event {
///     SwitchedOn,
/// }
///
/// impl Aggregate for Light {
///     type State = State;
///     type Command = Command;
///     type Event = Event;
///
///     fn decide(state: &State, command: Command) -> Result<Vec<Event>, DecideError> {
///         match command {
///             Command::SwitchOn if state.on => Err(DecideError::rejected("already on")),
///             Command::SwitchOn => Ok(vec![Event::SwitchedOn]),
///         }
///     }
///
///     fn apply(state: &mut State, event: Event) {
///         match event {
///             Event::SwitchedOn => state.on = true,
///         }
///     }
/// }
///
/// let mut state = Light::init();
/// let events = Light::decide(&state, Command::SwitchOn).unwrap();
/// for event in events {
///     Light::apply(&mut state, event);
/// }
/// assert!(state.on);
/// assert_eq!(
///     Light::decide(&state, Command::SwitchOn).err(),
///     Some(DecideError::rejected("already on"))
/// );
/// ```
pub trait Aggregate {
    /// The aggregate's state. Serialized to JSON between calls; [`Aggregate::init`] creates it.
    type State: Serialize + DeserializeOwned + Default;
    /// The commands the aggregate accepts: usually an enum with
    /// `#[serde(tag = "type", rename_all = "snake_case")]`.
    type Command: DeserializeOwned;
    /// The events the aggregate produces: usually an enum with
    /// `#[serde(tag = "type", rename_all = "snake_case")]`. Each must serialize to a JSON object.
    type Event: Serialize + DeserializeOwned;

    /// The state of an aggregate that has no events yet. Defaults to `State::default()`.
    fn init() -> Self::State {
        Self::State::default()
    }

    /// Decides which events `command` produces in `state`, or why it produces none.
    ///
    /// Return [`DecideError::Rejected`] when a business rule refuses the command and
    /// [`DecideError::Invalid`] when the command itself is malformed. Must be deterministic and
    /// must not mutate anything: the host may call it again with the same inputs.
    fn decide(state: &Self::State, command: Self::Command)
        -> Result<Vec<Self::Event>, DecideError>;

    /// Folds one event into the state.
    fn apply(state: &mut Self::State, event: Self::Event);

    /// The schema version recorded with `event` (the WIT `schema-version`). Defaults to 1.
    ///
    /// Bump it for an event type when its payload changes incompatibly, and teach
    /// [`Aggregate::upcast`] to convert the older payloads.
    fn event_schema_version(event: &Self::Event) -> u32 {
        let _ = event;
        1
    }

    /// Rewrites a stored event payload (without its `"type"` field) of `schema_version` into the
    /// shape [`Aggregate::Event`] deserializes today. Called for every event before `apply`;
    /// defaults to returning `payload` unchanged. An `Err` makes the host's `apply` call fail.
    ///
    /// # Examples
    ///
    /// Version 1 of `deposited` stored `{"cents": 250}`; version 2 stores `{"amount": 250}`:
    ///
    /// ```
    /// # use aggregate_sdk::Value;
    /// fn upcast(event_type: &str, schema_version: u32, mut payload: Value) -> Result<Value, String> {
    ///     if event_type == "deposited" && schema_version < 2 {
    ///         let cents = payload
    ///             .as_object_mut()
    ///             .and_then(|p| p.remove("cents"))
    ///             .ok_or("deposited v1 without cents")?;
    ///         payload["amount"] = cents;
    ///     }
    ///     Ok(payload)
    /// }
    /// # let v = upcast("deposited", 1, serde_json::json!({"cents": 250})).unwrap();
    /// # assert_eq!(v, serde_json::json!({"amount": 250}));
    /// ```
    fn upcast(event_type: &str, schema_version: u32, payload: Value) -> Result<Value, String> {
        let _ = (event_type, schema_version);
        Ok(payload)
    }
}

/// Why [`Aggregate::decide`] produced no events.
///
/// # Examples
///
/// ```
/// use aggregate_sdk::DecideError;
///
/// let err = DecideError::rejected("insufficient funds");
/// assert_eq!(err, DecideError::Rejected("insufficient funds".to_string()));
/// assert_eq!(err.message(), "insufficient funds");
/// assert_eq!(err.to_string(), "rejected: insufficient funds");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DecideError {
    /// A business rule refused the command (the host answers 422 with this message).
    Rejected(String),
    /// The command is malformed (the host answers 400 with this message).
    Invalid(String),
}

impl DecideError {
    /// A [`DecideError::Rejected`] with `message`.
    pub fn rejected(message: impl Into<String>) -> Self {
        Self::Rejected(message.into())
    }

    /// A [`DecideError::Invalid`] with `message`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::Invalid(message.into())
    }

    /// The message, whatever the kind.
    pub fn message(&self) -> &str {
        match self {
            Self::Rejected(m) | Self::Invalid(m) => m,
        }
    }
}

impl fmt::Display for DecideError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Rejected(m) => write!(f, "rejected: {m}"),
            Self::Invalid(m) => write!(f, "invalid: {m}"),
        }
    }
}

impl std::error::Error for DecideError {}

/// Exports an [`Aggregate`] implementation as the component's `aggregate:core/aggregate` world.
///
/// Invoke it exactly once, at the top level of a crate built with `crate-type = ["cdylib"]` (add
/// `"rlib"` to also run native tests) for `--target wasm32-wasip2`. The crate does not need to
/// depend on `wit-bindgen` itself.
///
/// # Examples
///
/// ```
/// use aggregate_sdk::{Aggregate, DecideError};
/// use serde::{Deserialize, Serialize};
///
/// pub struct Echo;
///
/// #[derive(Deserialize)]
/// #[serde(tag = "type", rename_all = "snake_case")]
/// pub enum Command {
///     Say { text: String },
/// }
///
/// #[derive(Serialize, Deserialize)]
/// #[serde(tag = "type", rename_all = "snake_case")]
/// pub enum Event {
///     Said { text: String },
/// }
///
/// impl Aggregate for Echo {
///     type State = Vec<String>;
///     type Command = Command;
///     type Event = Event;
///
///     fn decide(_: &Vec<String>, Command::Say { text }: Command) -> Result<Vec<Event>, DecideError> {
///         Ok(vec![Event::Said { text }])
///     }
///
///     fn apply(state: &mut Vec<String>, Event::Said { text }: Event) {
///         state.push(text);
///     }
/// }
///
/// aggregate_sdk::export_aggregate!(Echo);
/// ```
#[macro_export]
macro_rules! export_aggregate {
    ($aggregate:ty) => {
        const _: () = {
            #[doc(hidden)]
            pub struct __AggregateSdkExport;

            impl $crate::bindings::Guest for __AggregateSdkExport {
                fn init() -> ::std::string::String {
                    $crate::__private::init::<$aggregate>()
                }

                fn decide(
                    state: ::std::string::String,
                    command: $crate::bindings::Command,
                ) -> ::std::result::Result<
                    ::std::vec::Vec<$crate::bindings::Event>,
                    $crate::bindings::DecideError,
                > {
                    $crate::__private::decide::<$aggregate>(state, command)
                }

                fn apply(
                    state: ::std::string::String,
                    events: ::std::vec::Vec<$crate::bindings::Event>,
                ) -> ::std::result::Result<::std::string::String, ::std::string::String> {
                    $crate::__private::apply::<$aggregate>(state, events)
                }
            }

    $crate::bindings::export!(__AggregateSdkExport with_types_in $crate::bindings);
        };
    };
}

/// Glue between the generated WIT bindings and [`codec`]; used by [`export_aggregate!`].
#[doc(hidden)]
pub mod __private {
    use crate::bindings;
    use crate::codec::{self, RawEvent};
    use crate::{Aggregate, DecideError};

    pub fn init<A: Aggregate>() -> String {
        codec::init::<A>()
    }

    pub fn decide<A: Aggregate>(
        state: String,
        command: bindings::Command,
    ) -> Result<Vec<bindings::Event>, bindings::DecideError> {
        match codec::decide::<A>(&state, &command.command_type, &command.payload) {
            Ok(events) => Ok(events
                .into_iter()
                .map(|e| bindings::Event {
                    event_type: e.event_type,
                    schema_version: e.schema_version,
                    payload: e.payload,
                })
                .collect()),
            Err(DecideError::Rejected(m)) => Err(bindings::DecideError::Rejected(m)),
            Err(DecideError::Invalid(m)) => Err(bindings::DecideError::Invalid(m)),
        }
    }

    pub fn apply<A: Aggregate>(
        state: String,
        events: Vec<bindings::Event>,
    ) -> Result<String, String> {
        let events: Vec<RawEvent> = events
            .into_iter()
            .map(|e| RawEvent {
                event_type: e.event_type,
                schema_version: e.schema_version,
                payload: e.payload,
            })
            .collect();
        codec::apply::<A>(&state, &events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decide_error_constructors_and_message() {
        assert_eq!(
            DecideError::rejected("no"),
            DecideError::Rejected("no".into())
        );
        assert_eq!(
            DecideError::invalid("bad"),
            DecideError::Invalid("bad".into())
        );
        assert_eq!(DecideError::invalid("bad").message(), "bad");
        assert_eq!(DecideError::rejected("no").to_string(), "rejected: no");
        assert_eq!(DecideError::invalid("bad").to_string(), "invalid: bad");
    }
}
