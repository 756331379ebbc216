// Command __NAME__ is an event-sourced aggregate for the aggregate host, written with the Go
// guest SDK (aggregatehost.dev/sdk).
//
//	command    payload      event
//	add        {"by": 2}    added {"by": 2}
//	reset      {}           reset {}
//
// Arithmetic on the state is checked: an add that would overflow the counter is rejected, never
// wrapped (Go's int64 addition wraps silently).
//
// Test: go test ./...    Build: aggregate-host build . -o __NAME__.wasm
package main

import (
	"fmt"
	"math"

	aggregate "aggregatehost.dev/sdk"
)

// State is the aggregate's state, stored as JSON.
type State struct {
	Value int64 `json:"value"`
}

// By is the payload of `add` and `added`.
type By struct {
	By int64 `json:"by"`
}

// Counter is the aggregate: decide turns a command into events, apply folds an event into the
// state.
var Counter = aggregate.Definition[State]{
	Decide: func(s State, c aggregate.Command) ([]aggregate.Event, error) {
		switch c.Type {
		case "add":
			var p By
			if err := c.Decode(&p); err != nil {
				return nil, err // invalid: missing field, wrong type, not an object
			}
			if p.By <= 0 {
				return nil, aggregate.Invalidf("by must be positive, got %d", p.By)
			}
			if _, ok := add(s.Value, p.By); !ok {
				return nil, aggregate.Rejectedf("counter would overflow: value %d, adding %d", s.Value, p.By)
			}
			return []aggregate.Event{aggregate.NewEvent("added", p)}, nil
		case "reset":
			if s.Value == 0 {
				return nil, aggregate.Rejected("the counter is already zero")
			}
			return []aggregate.Event{aggregate.NewEvent("reset", nil)}, nil
		}
		return nil, aggregate.UnknownCommand(c)
	},
	Apply: func(s *State, e aggregate.Event) error {
		switch e.Type {
		case "added":
			var p By
			if err := e.Decode(&p); err != nil {
				return err
			}
			value, ok := add(s.Value, p.By)
			if !ok {
				return fmt.Errorf("counter would overflow: value %d, added %d", s.Value, p.By)
			}
			s.Value = value
		case "reset":
			s.Value = 0
		}
		return nil
	},
}

// add returns a + b, or false when the sum would overflow int64 (Go has no checked addition, so
// the bounds are tested before adding).
func add(a, b int64) (int64, bool) {
	if (b > 0 && a > math.MaxInt64-b) || (b < 0 && a < math.MinInt64-b) {
		return 0, false
	}
	return a + b, true
}

func init() { aggregate.Register(Counter) }

// main is required by the build but never runs: the host calls the aggregate's exports.
func main() {}
