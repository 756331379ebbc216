//! A bank account aggregate: the reference example for the Rust guest SDK.
//!
//! Commands (`command-type` and JSON payload):
//!
//! | command | payload | events |
//! | --- | --- | --- |
//! | `open` | `{"owner": "alice"}` | `opened {"owner": "alice"}` |
//! | `deposit` | `{"amount": 100}` | `deposited {"amount": 100}` |
//! | `withdraw` | `{"amount": 30}` | `withdrawn {"amount": 30}` |
//!
//! Rules: amounts must be positive and the owner non-empty (otherwise `invalid`); opening an
//! account twice, depositing to or withdrawing from an account that is not open, and
//! withdrawing more than the balance ("insufficient funds") are `rejected`.
//!
//! State: `{"opened": true, "owner": "alice", "balance": 70}`.

use aggregate_sdk::{Aggregate, DecideError};
use serde::{Deserialize, Serialize};

/// The bank account aggregate.
pub struct BankAccount;

/// The state of one account.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// Whether `open` has happened.
    pub opened: bool,
    /// The account holder; empty until opened.
    pub owner: String,
    /// The balance in minor units (cents).
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
        /// Positive amount in minor units, at most the balance.
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
    /// Money was paid in.
    Deposited {
        /// Amount in minor units.
        amount: i64,
    },
    /// Money was taken out.
    Withdrawn {
        /// Amount in minor units.
        amount: i64,
    },
}

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

impl Aggregate for BankAccount {
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
                Ok(vec![Event::Deposited { amount }])
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
            Event::Deposited { amount } => state.balance += amount,
            Event::Withdrawn { amount } => state.balance -= amount,
        }
    }
}

aggregate_sdk::export_aggregate!(BankAccount);

#[cfg(test)]
mod tests {
    use super::*;
    use aggregate_sdk::testing::given;

    fn opened() -> Event {
        Event::Opened {
            owner: "alice".into(),
        }
    }

    #[test]
    fn open_a_new_account() {
        given::<BankAccount>([])
            .when(Command::Open {
                owner: "alice".into(),
            })
            .then([opened()])
            .then_state(Account {
                opened: true,
                owner: "alice".into(),
                balance: 0,
            });
    }

    #[test]
    fn opening_twice_is_rejected() {
        given::<BankAccount>([opened()])
            .when(Command::Open {
                owner: "bob".into(),
            })
            .then_error(DecideError::rejected(
                "account is already open (owner alice)",
            ));
    }

    #[test]
    fn owner_must_not_be_empty() {
        given::<BankAccount>([])
            .when(Command::Open { owner: " ".into() })
            .then_error(DecideError::invalid("owner must not be empty"));
    }

    #[test]
    fn deposit_increases_the_balance() {
        given::<BankAccount>([opened(), Event::Deposited { amount: 50 }])
            .when(Command::Deposit { amount: 25 })
            .then([Event::Deposited { amount: 25 }])
            .then_state(Account {
                opened: true,
                owner: "alice".into(),
                balance: 75,
            });
    }

    #[test]
    fn deposit_to_an_unopened_account_is_rejected() {
        given::<BankAccount>([])
            .when(Command::Deposit { amount: 10 })
            .then_error(DecideError::rejected("account is not open"));
    }

    #[test]
    fn withdraw_from_an_unopened_account_is_rejected() {
        given::<BankAccount>([])
            .when(Command::Withdraw { amount: 10 })
            .then_rejected_containing("not open");
    }

    #[test]
    fn amounts_must_be_positive() {
        for amount in [0, -5] {
            given::<BankAccount>([opened()])
                .when(Command::Deposit { amount })
                .then_error(DecideError::invalid(format!(
                    "amount must be positive, got {amount}"
                )));
            given::<BankAccount>([opened(), Event::Deposited { amount: 100 }])
                .when(Command::Withdraw { amount })
                .then_invalid_containing("amount must be positive");
        }
    }

    #[test]
    fn withdraw_within_the_balance() {
        given::<BankAccount>([opened(), Event::Deposited { amount: 100 }])
            .when(Command::Withdraw { amount: 100 })
            .then([Event::Withdrawn { amount: 100 }])
            .then_state(Account {
                opened: true,
                owner: "alice".into(),
                balance: 0,
            });
    }

    #[test]
    fn withdraw_beyond_the_balance_is_rejected() {
        given::<BankAccount>([
            opened(),
            Event::Deposited { amount: 100 },
            Event::Withdrawn { amount: 30 },
        ])
        .when(Command::Withdraw { amount: 71 })
        .then_rejected_containing("insufficient funds")
        .then_error(DecideError::rejected(
            "insufficient funds: balance 70, requested 71",
        ));
    }

    #[test]
    fn commands_through_the_json_mapping() {
        given::<BankAccount>([opened(), Event::Deposited { amount: 100 }])
            .when_raw("withdraw", r#"{"amount": 40}"#)
            .then([Event::Withdrawn { amount: 40 }])
            .then_state(Account {
                opened: true,
                owner: "alice".into(),
                balance: 60,
            });
        given::<BankAccount>([opened()])
            .when_encoded(Command::Deposit { amount: 5 })
            .then([Event::Deposited { amount: 5 }]);
    }

    #[test]
    fn malformed_commands_are_invalid() {
        given::<BankAccount>([opened()])
            .when_raw("deposit", "{}")
            .then_invalid_containing("missing field `amount`");
        given::<BankAccount>([opened()])
            .when_raw("deposit", r#"{"amount": "ten"}"#)
            .then_invalid_containing("field `amount`: invalid type: string \"ten\", expected i64");
        given::<BankAccount>([opened()])
            .when_raw("deposit", "[]")
            .then_invalid_containing("must be a JSON object");
        given::<BankAccount>([opened()])
            .when_raw("close", "{}")
            .then_invalid_containing("unknown variant `close`");
    }

    #[test]
    fn wire_format_of_state_and_events() {
        use aggregate_sdk::codec;
        assert_eq!(
            codec::init::<BankAccount>(),
            r#"{"opened":false,"owner":"","balance":0}"#
        );
        let events = codec::decide::<BankAccount>(
            r#"{"opened":true,"owner":"alice","balance":0}"#,
            "deposit",
            r#"{"amount":7}"#,
        )
        .unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].event_type, "deposited");
        assert_eq!(events[0].schema_version, 1);
        assert_eq!(events[0].payload, r#"{"amount":7}"#);
    }
}
