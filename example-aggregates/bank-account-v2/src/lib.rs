//! Version 2 of the bank account, for hot-deploy tests: the same commands, rules and state as
//! `bank-account`, but a deposit now records its currency. The `deposited` event is at schema
//! version 2 (`{"amount": 100, "currency": "EUR"}`); version-1 deposits (written by
//! `bank-account`) are upcast to EUR, so v2 folds any mix of old and new events.
//!
//! A test can tell which version decided a command from the response alone: v1 writes
//! `deposited` at schema 1 without a currency, v2 at schema 2 with one.

use aggregate_sdk::{Aggregate, DecideError, Value};
use serde::{Deserialize, Serialize};

/// The bank account aggregate, version 2.
pub struct BankAccountV2;

/// The state of one account (the same shape as version 1, so snapshots carry over).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// Whether `open` has happened.
    pub opened: bool,
    /// The account holder.
    pub owner: String,
    /// The balance in minor units.
    pub balance: i64,
}

/// What a client may ask of an account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Command {
    /// Open the account for `owner`.
    Open {
        /// The account holder.
        owner: String,
    },
    /// Pay `amount` in.
    Deposit {
        /// Positive amount in minor units.
        amount: i64,
    },
    /// Take `amount` out.
    Withdraw {
        /// Positive amount, at most the balance.
        amount: i64,
    },
}

/// What happened to an account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// The account was opened.
    Opened {
        /// The account holder.
        owner: String,
    },
    /// Money was paid in (schema 2: with its currency).
    Deposited {
        /// Amount in minor units.
        amount: i64,
        /// ISO 4217 code.
        currency: String,
    },
    /// Money was taken out.
    Withdrawn {
        /// Amount in minor units.
        amount: i64,
    },
}

/// The only currency of this version.
pub const CURRENCY: &str = "EUR";

fn positive(amount: i64) -> Result<i64, DecideError> {
    if amount > 0 {
        Ok(amount)
    } else {
        Err(DecideError::invalid(format!(
            "amount must be positive, got {amount}"
        )))
    }
}

fn require_open(state: &Account) -> Result<(), DecideError> {
    if state.opened {
        Ok(())
    } else {
        Err(DecideError::rejected("account is not open"))
    }
}

impl Aggregate for BankAccountV2 {
    type State = Account;
    type Command = Command;
    type Event = Event;

    fn decide(state: &Account, command: Command) -> Result<Vec<Event>, DecideError> {
        match command {
            Command::Open { owner } => {
                if owner.trim().is_empty() {
                    return Err(DecideError::invalid("owner must not be empty"));
                }
                if state.opened {
                    return Err(DecideError::rejected(format!(
                        "account is already open (owner {})",
                        state.owner
                    )));
                }
                Ok(vec![Event::Opened { owner }])
            }
            Command::Deposit { amount } => {
                let amount = positive(amount)?;
                require_open(state)?;
                Ok(vec![Event::Deposited {
                    amount,
                    currency: CURRENCY.into(),
                }])
            }
            Command::Withdraw { amount } => {
                let amount = positive(amount)?;
                require_open(state)?;
                if amount > state.balance {
                    return Err(DecideError::rejected(format!(
                        "insufficient funds: balance {}, requested {amount}",
                        state.balance
                    )));
                }
                Ok(vec![Event::Withdrawn { amount }])
            }
        }
    }

    fn apply(state: &mut Account, event: Event) {
        match event {
            Event::Opened { owner } => {
                state.opened = true;
                state.owner = owner;
            }
            Event::Deposited { amount, .. } => state.balance += amount,
            Event::Withdrawn { amount } => state.balance -= amount,
        }
    }

    fn event_schema_version(event: &Event) -> u32 {
        match event {
            Event::Deposited { .. } => 2,
            _ => 1,
        }
    }

    fn upcast(event_type: &str, schema_version: u32, mut payload: Value) -> Result<Value, String> {
        if event_type == "deposited" && schema_version < 2 {
            let object = payload
                .as_object_mut()
                .ok_or("a deposited payload must be an object")?;
            object.insert("currency".into(), Value::String(CURRENCY.into()));
        }
        Ok(payload)
    }
}

aggregate_sdk::export_aggregate!(BankAccountV2);

#[cfg(test)]
mod tests {
    use super::*;
    use aggregate_sdk::testing::given;

    #[test]
    fn deposits_record_the_currency_at_schema_2() {
        given::<BankAccountV2>([Event::Opened {
            owner: "ada".into(),
        }])
        .when(Command::Deposit { amount: 5 })
        .then([Event::Deposited {
            amount: 5,
            currency: "EUR".into(),
        }]);
        let events = aggregate_sdk::codec::decide::<BankAccountV2>(
            r#"{"opened":true,"owner":"ada","balance":0}"#,
            "deposit",
            r#"{"amount":7}"#,
        )
        .unwrap();
        assert_eq!(
            (events[0].schema_version, events[0].payload.as_str()),
            (2, r#"{"amount":7,"currency":"EUR"}"#)
        );
    }

    #[test]
    fn version_1_deposits_are_upcast() {
        let v1 = aggregate_sdk::codec::RawEvent {
            event_type: "deposited".into(),
            schema_version: 1,
            payload: r#"{"amount":40}"#.into(),
        };
        let state = aggregate_sdk::codec::apply::<BankAccountV2>(
            r#"{"opened":true,"owner":"ada","balance":2}"#,
            &[v1],
        )
        .unwrap();
        assert_eq!(state, r#"{"opened":true,"owner":"ada","balance":42}"#);
    }

    #[test]
    fn rules_are_those_of_version_1() {
        given::<BankAccountV2>([Event::Opened {
            owner: "ada".into(),
        }])
        .when(Command::Withdraw { amount: 1 })
        .then_rejected_containing("insufficient funds");
        given::<BankAccountV2>([])
            .when(Command::Deposit { amount: 1 })
            .then_error(DecideError::rejected("account is not open"));
    }
}
