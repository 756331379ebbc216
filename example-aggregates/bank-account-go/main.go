// Command bank-account-go is the bank account aggregate written with the Go guest SDK; it behaves
// exactly like the Rust one in ../bank-account.
//
// Commands (command type and JSON payload):
//
//	open      {"owner": "alice"}  ->  opened    {"owner": "alice"}
//	deposit   {"amount": 100}     ->  deposited {"amount": 100}
//	withdraw  {"amount": 30}      ->  withdrawn {"amount": 30}
//
// Rules: amounts must be positive and the owner non-empty (otherwise invalid); opening an account
// twice, depositing to or withdrawing from an account that is not open, and withdrawing more than
// the balance ("insufficient funds") are rejected.
//
// State: {"opened": true, "owner": "alice", "balance": 70}.
//
// Build: aggregate-host build . -o bank_account_go.wasm
package main

import (
	"fmt"
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

func positive(c aggregate.Command) (Amount, error) {
	var p Amount
	if err := c.Decode(&p); err != nil {
		return p, err
	}
	if p.Amount <= 0 {
		return p, aggregate.Invalidf("amount must be positive, got %d", p.Amount)
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
		if e.Type == "withdrawn" {
			p.Amount = -p.Amount
		}
		s.Balance += p.Amount
	default:
		return fmt.Errorf("unknown event type `%s`", e.Type)
	}
	return nil
}
