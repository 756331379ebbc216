package main

import (
	"strings"
	"testing"

	aggregate "aggregatehost.dev/sdk"
	"aggregatehost.dev/sdk/aggregatetest"
)

func TestOk(t *testing.T) {
	aggregatetest.Given(t, Hostile).When("ok", nil).Then(aggregate.NewEvent("done", nil)).ThenState(State{})
	if got := Hostile.InitJSON(); got != "{}" {
		t.Errorf("init = %s", got)
	}
}

func TestEcho(t *testing.T) {
	for _, n := range []int{0, 1, 70000} {
		o := aggregatetest.Given(t, Hostile).When("echo", Echo{Size: uint32(n)})
		o.Then(aggregate.NewEvent("echoed", Echoed{Data: strings.Repeat("x", n)}))
		if got := len(o.Events()[0].Payload); got != n+len(`{"data":""}`) {
			t.Errorf("echo %d: payload is %d bytes", n, got)
		}
	}
	aggregatetest.Given(t, Hostile).When("echo", nil).ThenInvalid("missing field `size`")
	aggregatetest.Given(t, Hostile).When("echo", `{"size": -1}`).ThenInvalid("invalid type for field `size`")
}

func TestPanic(t *testing.T) {
	defer func() {
		if r := recover(); r != "boom" {
			t.Errorf("recovered %v, want boom", r)
		}
	}()
	aggregatetest.Given(t, Hostile).When("panic", nil)
}

func TestUnknownCommand(t *testing.T) {
	aggregatetest.Given(t, Hostile).When("close", nil).ThenInvalid("unknown command type `close`")
}

// spin and hog never return; they are exercised by the host's tests against the component.
