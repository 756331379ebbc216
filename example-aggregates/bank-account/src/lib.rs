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
//! Rules: amounts must be positive, at most [`MAX_BALANCE`], and the owner non-empty (otherwise
//! `invalid`); opening an account twice, depositing to or withdrawing from an account that is not
//! open, withdrawing more than the balance ("insufficient funds") and depositing past
//! [`MAX_BALANCE`] ("balance would overflow") are `rejected`.
//!
//! State: `{"opened": true, "owner": "alice", "balance": 70}`.
//!
//! Money never wraps: every sum on a balance is checked ([`add_to_balance`]). `decide` refuses a
//! deposit that would pass [`MAX_BALANCE`], so `apply` never meets one in a history this
//! aggregate decided. The Rust SDK's `apply` cannot return an error, so a history from elsewhere
//! that would overflow stops `apply` with a panic naming the event (the host reports the failed
//! call) rather than folding a wrong balance.

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

/// The largest balance an account holds, and so the largest amount: 2^53 − 1, the largest
/// integer that every language of this example represents exactly (JavaScript numbers are
/// doubles) and that any JSON reader of the state reads exactly (RFC 8259, section 6). The
/// bank account behaves the same in Rust, Go, JavaScript and Python
/// (`tests/parity/bank-account.yaml`), so its limit is the one they all share.
pub const MAX_BALANCE: i64 = (1 << 53) - 1;

/// `balance + delta`, or `None` when the sum would leave ±[`MAX_BALANCE`] (checked arithmetic:
/// it never wraps, whatever the operands).
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
                let amount = valid_amount(amount)?;
                require_open(state)?;
                if add_to_balance(state.balance, amount).is_none() {
                    return Err(DecideError::rejected(format!(
                        "balance would overflow: balance {}, requested {amount}, maximum \
                         {MAX_BALANCE}",
                        state.balance
                    )));
                }
                Ok(vec![Event::Deposited { amount }])
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
            Event::Deposited { amount } => {
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

    fn account(balance: i64) -> Account {
        Account {
            opened: true,
            owner: "alice".into(),
            balance,
        }
    }

    #[test]
    fn the_maximum_is_what_javascript_holds_exactly() {
        // 2^53 - 1: JavaScript's Number.MAX_SAFE_INTEGER, the limit the parity table uses.
        assert_eq!(MAX_BALANCE, 9_007_199_254_740_991);
        assert_eq!(MAX_BALANCE as f64 as i64, MAX_BALANCE);
        assert_ne!((MAX_BALANCE + 2) as f64 as i64, MAX_BALANCE + 2);
    }

    #[test]
    fn deposits_fill_the_balance_up_to_the_maximum() {
        given::<BankAccount>([
            opened(),
            Event::Deposited {
                amount: MAX_BALANCE - 1,
            },
        ])
        .when(Command::Deposit { amount: 1 })
        .then([Event::Deposited { amount: 1 }])
        .then_state(account(MAX_BALANCE));
        given::<BankAccount>([opened()])
            .when_raw("deposit", r#"{"amount": 9007199254740991}"#)
            .then([Event::Deposited {
                amount: MAX_BALANCE,
            }])
            .then_state(account(MAX_BALANCE));
    }

    #[test]
    fn a_deposit_that_would_overflow_the_balance_is_rejected() {
        given::<BankAccount>([
            opened(),
            Event::Deposited {
                amount: MAX_BALANCE,
            },
        ])
        .when(Command::Deposit { amount: 1 })
        .then_error(DecideError::rejected(
            "balance would overflow: balance 9007199254740991, requested 1, maximum \
                 9007199254740991",
        ));
        given::<BankAccount>([
            opened(),
            Event::Deposited {
                amount: MAX_BALANCE - 5,
            },
            Event::Withdrawn { amount: 5 },
        ])
        .when_raw("deposit", r#"{"amount": 4503599627370498}"#)
        .then_rejected_containing("balance would overflow: balance 9007199254740981");
    }

    #[test]
    fn a_withdrawal_makes_room_for_a_deposit_again() {
        given::<BankAccount>([
            opened(),
            Event::Deposited {
                amount: MAX_BALANCE,
            },
            Event::Withdrawn { amount: 1 },
        ])
        .when(Command::Deposit { amount: 1 })
        .then([Event::Deposited { amount: 1 }])
        .then_state(account(MAX_BALANCE));
    }

    #[test]
    fn amounts_beyond_the_maximum_are_invalid() {
        for amount in [MAX_BALANCE + 1, i64::MAX] {
            let message = format!("amount must be at most 9007199254740991, got {amount}");
            given::<BankAccount>([])
                .when(Command::Deposit { amount })
                .then_error(DecideError::invalid(message.clone()));
            given::<BankAccount>([opened(), Event::Deposited { amount: 100 }])
                .when(Command::Withdraw { amount })
                .then_error(DecideError::invalid(message));
        }
        // The story of the bug: i64::MAX and then 1 used to wrap the balance to i64::MIN.
        given::<BankAccount>([opened()])
            .when_raw("deposit", r#"{"amount": 9223372036854775807}"#)
            .then_invalid_containing("amount must be at most 9007199254740991");
    }

    #[test]
    fn balance_arithmetic_is_checked() {
        assert_eq!(add_to_balance(MAX_BALANCE - 1, 1), Some(MAX_BALANCE));
        assert_eq!(add_to_balance(MAX_BALANCE, 1), None);
        assert_eq!(add_to_balance(1, i64::MAX), None);
        assert_eq!(add_to_balance(i64::MAX, i64::MAX), None);
        assert_eq!(add_to_balance(-MAX_BALANCE, -1), None);
        assert_eq!(subtract_from_balance(MAX_BALANCE, MAX_BALANCE), Some(0));
        assert_eq!(subtract_from_balance(0, MAX_BALANCE), Some(-MAX_BALANCE));
        assert_eq!(subtract_from_balance(0, i64::MIN), None);
        assert_eq!(subtract_from_balance(-MAX_BALANCE, 1), None);
    }

    #[test]
    #[should_panic(expected = "balance would overflow: balance 9007199254740991, deposited 1")]
    fn apply_never_folds_a_history_past_the_maximum() {
        let _ = given::<BankAccount>([
            opened(),
            Event::Deposited {
                amount: MAX_BALANCE,
            },
            Event::Deposited { amount: 1 },
        ])
        .state();
    }

    #[test]
    #[should_panic(expected = "balance would overflow: balance 1, deposited 9223372036854775807")]
    fn apply_never_wraps() {
        let _ = given::<BankAccount>([
            opened(),
            Event::Deposited { amount: 1 },
            Event::Deposited { amount: i64::MAX },
        ])
        .state();
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
