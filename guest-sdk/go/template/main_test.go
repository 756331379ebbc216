package main

import (
	"math"
	"testing"

	aggregate "aggregatehost.dev/sdk"
	"aggregatehost.dev/sdk/aggregatetest"
)

func added(by int64) aggregate.Event { return aggregate.NewEvent("added", By{by}) }

func TestAdd(t *testing.T) {
	aggregatetest.Given(t, Counter, added(1)).
		When("add", By{2}).
		Then(added(2)).
		ThenState(State{Value: 3})
}

func TestAddNeedsAPositiveBy(t *testing.T) {
	aggregatetest.Given(t, Counter).When("add", By{0}).ThenInvalid("by must be positive, got 0")
	aggregatetest.Given(t, Counter).When("add", `{}`).ThenInvalid("missing field `by`")
}

func TestAddRefusesToOverflow(t *testing.T) {
	aggregatetest.Given(t, Counter, added(math.MaxInt64-1)).
		When("add", By{1}).
		Then(added(1)).
		ThenState(State{Value: math.MaxInt64})
	aggregatetest.Given(t, Counter, added(math.MaxInt64)).
		When("add", By{1}).
		ThenRejected("counter would overflow: value 9223372036854775807, adding 1").
		ThenState(State{Value: math.MaxInt64})
	_, err := Counter.ApplyJSON(Counter.InitJSON(), []aggregate.Event{added(math.MaxInt64), added(1)})
	if err == nil || err.Error() != "counter would overflow: value 9223372036854775807, added 1" {
		t.Errorf("apply of an overflowing history: %v", err)
	}
	for _, c := range []struct{ a, b, want int64 }{{1, 2, 3}, {math.MaxInt64, -1, math.MaxInt64 - 1}, {math.MinInt64, 1, math.MinInt64 + 1}} {
		if got, ok := add(c.a, c.b); !ok || got != c.want {
			t.Errorf("add(%d, %d) = %d, %v", c.a, c.b, got, ok)
		}
	}
	for _, c := range [][2]int64{{math.MaxInt64, 1}, {1, math.MaxInt64}, {math.MinInt64, -1}, {-2, math.MinInt64}} {
		if got, ok := add(c[0], c[1]); ok {
			t.Errorf("add(%d, %d) = %d, true; want an overflow", c[0], c[1], got)
		}
	}
}

func TestReset(t *testing.T) {
	aggregatetest.Given(t, Counter, added(5)).
		When("reset", nil).
		Then(aggregate.NewEvent("reset", nil)).
		ThenState(State{Value: 0})
	aggregatetest.Given(t, Counter).When("reset", nil).ThenRejected("already zero")
}

func TestUnknownCommand(t *testing.T) {
	aggregatetest.Given(t, Counter).When("close", nil).ThenInvalid("unknown command type `close`")
}
