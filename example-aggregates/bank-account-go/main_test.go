package main

import (
	"fmt"
	"math"
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

func TestTheMaximumIsWhatJavaScriptHoldsExactly(t *testing.T) {
	// 2^53 - 1: JavaScript's Number.MAX_SAFE_INTEGER, the limit the parity table uses.
	if MaxBalance != 9007199254740991 || int64(float64(MaxBalance)) != MaxBalance || int64(float64(MaxBalance+2)) == MaxBalance+2 {
		t.Errorf("MaxBalance = %d", int64(MaxBalance))
	}
}

func TestDepositsFillTheBalanceUpToTheMaximum(t *testing.T) {
	given(t, opened(), deposited(MaxBalance-1)).
		When("deposit", Amount{1}).
		Then(deposited(1)).
		ThenState(Account{Opened: true, Owner: "alice", Balance: MaxBalance})
	given(t, opened()).
		When("deposit", `{"amount": 9007199254740991}`).
		Then(deposited(MaxBalance)).
		ThenState(Account{Opened: true, Owner: "alice", Balance: MaxBalance})
}

func TestADepositThatWouldOverflowTheBalanceIsRejected(t *testing.T) {
	given(t, opened(), deposited(MaxBalance)).
		When("deposit", Amount{1}).
		ThenRejected("balance would overflow: balance 9007199254740991, requested 1, maximum 9007199254740991").
		ThenState(Account{Opened: true, Owner: "alice", Balance: MaxBalance})
	given(t, opened(), deposited(MaxBalance-5), withdrawn(5)).
		When("deposit", `{"amount": 4503599627370498}`).
		ThenRejected("balance would overflow: balance 9007199254740981, requested 4503599627370498").
		ThenState(Account{Opened: true, Owner: "alice", Balance: MaxBalance - 10})
}

func TestAWithdrawalMakesRoomForADepositAgain(t *testing.T) {
	given(t, opened(), deposited(MaxBalance), withdrawn(1)).
		When("deposit", Amount{1}).
		Then(deposited(1)).
		ThenState(Account{Opened: true, Owner: "alice", Balance: MaxBalance})
}

func TestAmountsBeyondTheMaximumAreInvalid(t *testing.T) {
	for _, amount := range []int64{MaxBalance + 1, math.MaxInt64} {
		want := fmt.Sprintf("amount must be at most 9007199254740991, got %d", amount)
		given(t).When("deposit", Amount{amount}).ThenInvalid(want)
		given(t, opened(), deposited(100)).When("withdraw", Amount{amount}).ThenInvalid(want)
	}
	// The story of the bug: int64's maximum and then 1 must not wrap the balance.
	given(t, opened()).
		When("deposit", `{"amount": 9223372036854775807}`).
		ThenInvalid("amount must be at most 9007199254740991").
		ThenState(Account{Opened: true, Owner: "alice"})
}

func TestBalanceArithmeticIsChecked(t *testing.T) {
	for _, c := range []struct {
		name        string
		fold        func(int64, int64) (int64, bool)
		balance, by int64
		want        int64
		wantOK      bool
	}{
		{"add up to the maximum", addToBalance, MaxBalance - 1, 1, MaxBalance, true},
		{"add past the maximum", addToBalance, MaxBalance, 1, 0, false},
		{"add past int64", addToBalance, 1, math.MaxInt64, 0, false},
		{"add int64 to itself", addToBalance, math.MaxInt64, math.MaxInt64, 0, false},
		{"add below the minimum", addToBalance, -MaxBalance, -1, 0, false},
		{"add below int64", addToBalance, -1, math.MinInt64, 0, false},
		{"subtract to zero", subtractFromBalance, MaxBalance, MaxBalance, 0, true},
		{"subtract down to the minimum", subtractFromBalance, 0, MaxBalance, -MaxBalance, true},
		{"subtract int64's minimum", subtractFromBalance, 0, math.MinInt64, 0, false},
		{"subtract below the minimum", subtractFromBalance, -MaxBalance, 1, 0, false},
		{"subtract past int64", subtractFromBalance, math.MinInt64, 1, 0, false},
	} {
		got, ok := c.fold(c.balance, c.by)
		if got != c.want || ok != c.wantOK {
			t.Errorf("%s: (%d, %d) = %d, %v; want %d, %v", c.name, c.balance, c.by, got, ok, c.want, c.wantOK)
		}
	}
}

func TestApplyRefusesAHistoryThatWouldOverflow(t *testing.T) {
	for _, c := range []struct {
		history []aggregate.Event
		want    string
	}{
		{[]aggregate.Event{deposited(MaxBalance), deposited(1)}, "balance would overflow: balance 9007199254740991, deposited 1"},
		{[]aggregate.Event{deposited(1), deposited(math.MaxInt64)}, "balance would overflow: balance 1, deposited 9223372036854775807"},
		{[]aggregate.Event{withdrawn(MaxBalance), withdrawn(1)}, "balance would overflow: balance -9007199254740991, withdrawn 1"},
		{[]aggregate.Event{withdrawn(math.MinInt64)}, "balance would overflow: balance 0, withdrawn -9223372036854775808"},
	} {
		state, err := BankAccount.ApplyJSON(BankAccount.InitJSON(), c.history)
		if err == nil || err.Error() != c.want {
			t.Errorf("apply %v = %s, %v; want the error %q", c.history, state, err, c.want)
		}
	}
}
