package main

import (
	"testing"

	aggregate "aggregatehost.dev/sdk"
	"aggregatehost.dev/sdk/aggregatetest"
)

// given starts a scenario for the bank account from its history.
func given(t *testing.T, history ...aggregate.Event) *aggregatetest.Scenario[Account] {
	t.Helper()
	return aggregatetest.Given(t, BankAccount, history...)
}

func opened() aggregate.Event           { return aggregate.NewEvent("opened", Open{Owner: "alice"}) }
func deposited(n int64) aggregate.Event { return aggregate.NewEvent("deposited", Amount{n}) }
func withdrawn(n int64) aggregate.Event { return aggregate.NewEvent("withdrawn", Amount{n}) }

func TestOpenANewAccount(t *testing.T) {
	given(t).
		When("open", Open{Owner: "alice"}).
		Then(opened()).
		ThenState(Account{Opened: true, Owner: "alice"})
}

func TestOpeningTwiceIsRejected(t *testing.T) {
	given(t, opened()).
		When("open", Open{Owner: "bob"}).
		ThenRejected("account is already open (owner alice)").
		ThenState(Account{Opened: true, Owner: "alice"})
}

func TestOwnerMustNotBeEmpty(t *testing.T) {
	for _, owner := range []string{"", " ", "\t"} {
		given(t).When("open", Open{Owner: owner}).ThenInvalid("owner must not be empty")
	}
	given(t).When("open", `{}`).ThenInvalid("invalid `open` command: missing field `owner`")
}

func TestDepositIncreasesTheBalance(t *testing.T) {
	given(t, opened(), deposited(50)).
		When("deposit", Amount{25}).
		Then(deposited(25)).
		ThenState(Account{Opened: true, Owner: "alice", Balance: 75})
}

func TestDepositToAnUnopenedAccountIsRejected(t *testing.T) {
	given(t).When("deposit", Amount{10}).ThenRejected("account is not open")
}

func TestWithdrawFromAnUnopenedAccountIsRejected(t *testing.T) {
	given(t).When("withdraw", Amount{10}).ThenRejected("account is not open")
}

func TestAmountsMustBePositive(t *testing.T) {
	given(t, opened()).When("deposit", Amount{0}).ThenInvalid("amount must be positive, got 0")
	given(t, opened()).When("deposit", Amount{-5}).ThenInvalid("amount must be positive, got -5")
	given(t, opened(), deposited(100)).When("withdraw", Amount{0}).ThenInvalid("amount must be positive, got 0")
	given(t, opened(), deposited(100)).When("withdraw", Amount{-5}).ThenInvalid("amount must be positive, got -5")
	// The amount is checked before the account: an invalid amount on a closed account is invalid.
	given(t).When("deposit", Amount{-1}).ThenInvalid("amount must be positive, got -1")
}

func TestWithdrawWithinTheBalance(t *testing.T) {
	given(t, opened(), deposited(100)).
		When("withdraw", Amount{100}).
		Then(withdrawn(100)).
		ThenState(Account{Opened: true, Owner: "alice", Balance: 0})
}

func TestWithdrawBeyondTheBalanceIsRejected(t *testing.T) {
	given(t, opened(), deposited(100), withdrawn(30)).
		When("withdraw", Amount{71}).
		ThenRejected("insufficient funds: balance 70, requested 71").
		ThenState(Account{Opened: true, Owner: "alice", Balance: 70})
}

func TestCommandsThroughTheJSONMapping(t *testing.T) {
	given(t, opened(), deposited(100)).
		When("withdraw", `{"amount": 40}`).
		Then(aggregate.Event{Type: "withdrawn", SchemaVersion: 1, Payload: []byte(`{"amount":40}`)}).
		ThenState(Account{Opened: true, Owner: "alice", Balance: 60})
}

func TestMalformedCommandsAreInvalid(t *testing.T) {
	given(t, opened()).When("deposit", `{}`).ThenInvalid("missing field `amount`")
	given(t, opened()).When("deposit", `{"amount": null}`).ThenInvalid("field `amount` must not be null")
	given(t, opened()).When("deposit", `{"amount": "ten"}`).
		ThenInvalid("invalid `deposit` command: invalid type for field `amount`: got string, expected int64")
	given(t, opened()).When("deposit", `{"amount": 1.5}`).ThenInvalid("got number 1.5, expected int64")
	given(t, opened()).When("deposit", `[]`).ThenInvalid("payload of `deposit` command must be a JSON object")
	given(t, opened()).When("deposit", `{"amount":`).ThenInvalid("payload of `deposit` command is not JSON")
	given(t, opened()).When("close", `{}`).ThenInvalid("unknown command type `close`")
}

func TestWireFormatOfStateAndEvents(t *testing.T) {
	if got := BankAccount.InitJSON(); got != `{"opened":false,"owner":"","balance":0}` {
		t.Errorf("init = %s", got)
	}
	events, err := BankAccount.DecideJSON(`{"opened":true,"owner":"alice","balance":0}`,
		aggregate.Command{Type: "deposit", Payload: []byte(`{"amount":7}`)})
	if err != nil || len(events) != 1 {
		t.Fatalf("decide = %v, %v", events, err)
	}
	if e := events[0]; e.Type != "deposited" || e.SchemaVersion != 1 || string(e.Payload) != `{"amount":7}` {
		t.Errorf("event = %s %d %s", e.Type, e.SchemaVersion, e.Payload)
	}
	state, err := BankAccount.ApplyJSON(`{"opened":true,"owner":"alice","balance":0}`, events)
	if err != nil || state != `{"opened":true,"owner":"alice","balance":7}` {
		t.Errorf("apply = %s, %v", state, err)
	}
}

func TestUnknownEventsFailApply(t *testing.T) {
	_, err := BankAccount.ApplyJSON(BankAccount.InitJSON(), []aggregate.Event{{Type: "closed", SchemaVersion: 1, Payload: []byte(`{}`)}})
	if err == nil || err.Error() != "unknown event type `closed`" {
		t.Errorf("apply of an unknown event: %v", err)
	}
}

func TestUnicodeOwners(t *testing.T) {
	given(t).
		When("open", `{"owner": "Zoë 🦀"}`).
		Then(aggregate.NewEvent("opened", Open{Owner: "Zoë 🦀"})).
		ThenState(Account{Opened: true, Owner: "Zoë 🦀"})
}

func TestLargeAmountsStayExact(t *testing.T) {
	given(t, opened(), deposited(4000000000000)).
		When("deposit", `{"amount": 1}`).
		Then(deposited(1)).
		ThenState(Account{Opened: true, Owner: "alice", Balance: 4000000000001})
}

func TestExtraPayloadFieldsAreIgnored(t *testing.T) {
	given(t).
		When("open", `{"owner": "Ada", "note": "vip"}`).
		Then(aggregate.Event{Type: "opened", SchemaVersion: 1, Payload: []byte(`{"owner":"Ada"}`)})
	given(t, opened()).
		When("deposit", `{"amount": 5, "currency": "EUR"}`).
		Then(aggregate.Event{Type: "deposited", SchemaVersion: 1, Payload: []byte(`{"amount":5}`)})
}

func TestMalformedCommandsNameTheField(t *testing.T) {
	given(t, opened()).When("deposit", `{"amount": true}`).ThenInvalid("invalid type for field `amount`: got bool, expected int64")
	given(t, opened()).When("withdraw", `{"amount": null}`).ThenInvalid("field `amount` must not be null")
	given(t).When("open", `{"owner": 7}`).ThenInvalid("invalid type for field `owner`: got number, expected string")
	given(t, opened()).When("deposit", `{"amount": 1e30}`).ThenInvalid("invalid type for field `amount`: got number 1e30, expected int64")
}
