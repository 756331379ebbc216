package main

import (
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
