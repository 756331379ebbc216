//! Version 2 of the bank account, for hot-deploy tests: the same commands, rules and state as
//! `bank-account`, but a deposit now records its currency. The `deposited` event is at schema
//! version 2 (`{"amount": 100, "currency": "EUR"}`); version-1 deposits (written by
//! `bank-account`) are upcast to EUR, so v2 folds any mix of old and new events.
//!
//! A test can tell which version decided a command from the response alone: v1 writes
//! `deposited` at schema 1 without a currency, v2 at schema 2 with one.
//!
//! The limits are version 1's too: amounts and balances stay within [`MAX_BALANCE`] (2^53 − 1),
//! every sum on a balance is checked, and a deposit past the maximum is rejected ("balance would
//! overflow"). `apply` cannot return an error, so a history that would overflow (never one this
//! aggregate decided) stops it with a panic naming the event rather than a wrapped balance.

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

/// The largest balance, and so the largest amount: 2^53 − 1, as in version 1 (the largest
/// integer every guest language and JSON reader holds exactly).
pub const MAX_BALANCE: i64 = (1 << 53) - 1;

/// `balance + delta`, or `None` when the sum would leave ±[`MAX_BALANCE`] (never wraps).
pub fn add_to_balance(balance: i64, delta: i64) -> Option<i64> {
    balance
        .checked_add(delta)
        .filter(|sum| (-MAX_BALANCE..=MAX_BALANCE).contains(sum))
}

/// `balance - amount`, checked like [`add_to_balance`].
pub fn subtract_from_balance(balance: i64, amount: i64) -> Option<i64> {
    balance
        .checked_sub(amount)
        .filter(|difference| (-MAX_BALANCE..=MAX_BALANCE).contains(difference))
}

/// An amount is positive and at most [`MAX_BALANCE`] (checked before the account is open).
fn valid_amount(amount: i64) -> Result<i64, DecideError> {
    if amount <= 0 {
        Err(DecideError::invalid(format!(
            "amount must be positive, got {amount}"
        )))
    } else if amount > MAX_BALANCE {
        Err(DecideError::invalid(format!(
            "amount must be at most {MAX_BALANCE}, got {amount}"
        )))
    } else {
        Ok(amount)
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
                let amount = valid_amount(amount)?;
                require_open(state)?;
                if add_to_balance(state.balance, amount).is_none() {
                    return Err(DecideError::rejected(format!(
                        "balance would overflow: balance {}, requested {amount}, maximum \
                         {MAX_BALANCE}",
                        state.balance
                    )));
                }
                Ok(vec![Event::Deposited {
                    amount,
                    currency: CURRENCY.into(),
                }])
            }
            Command::Withdraw { amount } => {
                let amount = valid_amount(amount)?;
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
            Event::Deposited { amount, .. } => {
                state.balance = add_to_balance(state.balance, amount).unwrap_or_else(|| {
                    panic!(
                        "balance would overflow: balance {}, deposited {amount}",
                        state.balance
                    )
                });
            }
            Event::Withdrawn { amount } => {
                state.balance = subtract_from_balance(state.balance, amount).unwrap_or_else(|| {
                    panic!(
                        "balance would overflow: balance {}, withdrawn {amount}",
                        state.balance
                    )
                });
            }
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

    #[test]
    fn a_deposit_that_would_overflow_the_balance_is_rejected() {
        let opened = Event::Opened {
            owner: "ada".into(),
        };
        let full = Event::Deposited {
            amount: MAX_BALANCE,
            currency: "EUR".into(),
        };
        given::<BankAccountV2>([opened.clone(), full.clone()])
            .when(Command::Deposit { amount: 1 })
            .then_error(DecideError::rejected(
                "balance would overflow: balance 9007199254740991, requested 1, maximum \
                 9007199254740991",
            ));
        given::<BankAccountV2>([opened.clone(), full, Event::Withdrawn { amount: 1 }])
            .when(Command::Deposit { amount: 1 })
            .then([Event::Deposited {
                amount: 1,
                currency: "EUR".into(),
            }]);
        given::<BankAccountV2>([opened])
            .when_raw("deposit", r#"{"amount": 9223372036854775807}"#)
            .then_error(DecideError::invalid(
                "amount must be at most 9007199254740991, got 9223372036854775807",
            ));
    }

    #[test]
    fn balance_arithmetic_is_checked() {
        assert_eq!(MAX_BALANCE, 9_007_199_254_740_991);
        assert_eq!(add_to_balance(MAX_BALANCE - 1, 1), Some(MAX_BALANCE));
        assert_eq!(add_to_balance(MAX_BALANCE, 1), None);
        assert_eq!(add_to_balance(i64::MAX, 1), None);
        assert_eq!(subtract_from_balance(0, MAX_BALANCE), Some(-MAX_BALANCE));
        assert_eq!(subtract_from_balance(0, i64::MIN), None);
    }

    #[test]
    #[should_panic(expected = "balance would overflow: balance 9007199254740991, deposited 1")]
    fn apply_never_folds_an_upcast_history_past_the_maximum() {
        // Version-1 deposits (upcast) that a broken version 1 let pass the maximum.
        let v1 = |amount: i64| aggregate_sdk::codec::RawEvent {
            event_type: "deposited".into(),
            schema_version: 1,
            payload: format!(r#"{{"amount":{amount}}}"#),
        };
        let _ = aggregate_sdk::codec::apply::<BankAccountV2>(
            r#"{"opened":true,"owner":"ada","balance":0}"#,
            &[v1(MAX_BALANCE), v1(1)],
        );
    }
}
