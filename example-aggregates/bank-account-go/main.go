// Command bank-account-go is the bank account aggregate written with the Go guest SDK; it behaves
// exactly like the Rust one in ../bank-account.
//
// Commands (command type and JSON payload):
//
//	open      {"owner": "alice"}  ->  opened    {"owner": "alice"}
//	deposit   {"amount": 100}     ->  deposited {"amount": 100}
//	withdraw  {"amount": 30}      ->  withdrawn {"amount": 30}
//
// Rules: amounts must be positive, at most MaxBalance, and the owner non-empty (otherwise
// invalid); opening an account twice, depositing to or withdrawing from an account that is not
// open, withdrawing more than the balance ("insufficient funds") and depositing past MaxBalance
// ("balance would overflow") are rejected.
//
// State: {"opened": true, "owner": "alice", "balance": 70}.
//
// Money never wraps: every sum on a balance is checked (addToBalance, subtractFromBalance), and
// apply refuses, naming the event, a history that would leave ±MaxBalance (never one this
// aggregate decided).
//
// Build: aggregate-host build . -o bank_account_go.wasm
package main

import (
	"fmt"
	"math"
	"strings"

	aggregate "aggregatehost.dev/sdk"
)

// Account is the state of one account.
type Account struct {
	// Opened says whether `open` has happened.
	Opened bool `json:"opened"`
	// Owner is the account holder; empty until opened.
	Owner string `json:"owner"`
	// Balance is in minor units (cents).
	Balance int64 `json:"balance"`
}

// Open is the payload of `open` and of `opened`.
type Open struct {
	Owner string `json:"owner"`
}

// Amount is the payload of `deposit`, `withdraw`, `deposited` and `withdrawn`.
type Amount struct {
	Amount int64 `json:"amount"`
}

// MaxBalance is the largest balance an account holds, and so the largest amount: 2^53 - 1, the
// largest integer that every language of this example represents exactly (JavaScript numbers are
// doubles) and that any JSON reader of the state reads exactly. The bank account behaves the same
// in Rust, Go, JavaScript and Python (tests/parity/bank-account.yaml), so its limit is the one
// they all share.
const MaxBalance = 1<<53 - 1

// addToBalance returns balance + delta, or false when the sum would leave ±MaxBalance. Go has no
// checked addition: the int64 bounds are tested before adding, so the sum never wraps.
func addToBalance(balance, delta int64) (int64, bool) {
	if (delta > 0 && balance > math.MaxInt64-delta) || (delta < 0 && balance < math.MinInt64-delta) {
		return 0, false // beyond int64, so beyond MaxBalance
	}
	if sum := balance + delta; -MaxBalance <= sum && sum <= MaxBalance {
		return sum, true
	}
	return 0, false
}

// subtractFromBalance returns balance - amount, checked like addToBalance.
func subtractFromBalance(balance, amount int64) (int64, bool) {
	if (amount < 0 && balance > math.MaxInt64+amount) || (amount > 0 && balance < math.MinInt64+amount) {
		return 0, false // beyond int64, so beyond MaxBalance
	}
	if difference := balance - amount; -MaxBalance <= difference && difference <= MaxBalance {
		return difference, true
	}
	return 0, false
}

// BankAccount is the aggregate definition.
var BankAccount = aggregate.Definition[Account]{
	Decide: decide,
	Apply:  apply,
}

func init() { aggregate.Register(BankAccount) }

func main() {}

func decide(s Account, c aggregate.Command) ([]aggregate.Event, error) {
	switch c.Type {
	case "open":
		var p Open
		if err := c.Decode(&p); err != nil {
			return nil, err
		}
		if strings.TrimSpace(p.Owner) == "" {
			return nil, aggregate.Invalid("owner must not be empty")
		}
		if s.Opened {
			return nil, aggregate.Rejectedf("account is already open (owner %s)", s.Owner)
		}
		return []aggregate.Event{aggregate.NewEvent("opened", p)}, nil
	case "deposit":
		p, err := positive(c)
		if err != nil {
			return nil, err
		}
		if err := requireOpen(s); err != nil {
			return nil, err
		}
		if _, ok := addToBalance(s.Balance, p.Amount); !ok {
			return nil, aggregate.Rejectedf("balance would overflow: balance %d, requested %d, maximum %d", s.Balance, p.Amount, MaxBalance)
		}
		return []aggregate.Event{aggregate.NewEvent("deposited", p)}, nil
	case "withdraw":
		p, err := positive(c)
		if err != nil {
			return nil, err
		}
		if err := requireOpen(s); err != nil {
			return nil, err
		}
		if p.Amount > s.Balance {
			return nil, aggregate.Rejectedf("insufficient funds: balance %d, requested %d", s.Balance, p.Amount)
		}
		return []aggregate.Event{aggregate.NewEvent("withdrawn", p)}, nil
	}
	return nil, aggregate.UnknownCommand(c)
}

// positive decodes the amount of a command: positive and at most MaxBalance (checked before the
// account is open).
func positive(c aggregate.Command) (Amount, error) {
	var p Amount
	if err := c.Decode(&p); err != nil {
		return p, err
	}
	if p.Amount <= 0 {
		return p, aggregate.Invalidf("amount must be positive, got %d", p.Amount)
	}
	if p.Amount > MaxBalance {
		return p, aggregate.Invalidf("amount must be at most %d, got %d", MaxBalance, p.Amount)
	}
	return p, nil
}

func requireOpen(s Account) error {
	if !s.Opened {
		return aggregate.Rejected("account is not open")
	}
	return nil
}

func apply(s *Account, e aggregate.Event) error {
	switch e.Type {
	case "opened":
		var p Open
		if err := e.Decode(&p); err != nil {
			return err
		}
		s.Opened, s.Owner = true, p.Owner
	case "deposited", "withdrawn":
		var p Amount
		if err := e.Decode(&p); err != nil {
			return err
		}
		fold := addToBalance
		if e.Type == "withdrawn" {
			fold = subtractFromBalance
		}
		balance, ok := fold(s.Balance, p.Amount)
		if !ok {
			return fmt.Errorf("balance would overflow: balance %d, %s %d", s.Balance, e.Type, p.Amount)
		}
		s.Balance = balance
	default:
		return fmt.Errorf("unknown event type `%s`", e.Type)
	}
	return nil
}
