// Command __NAME__ is an event-sourced aggregate for the aggregate host, written with the Go
// guest SDK (aggregatehost.dev/sdk).
//
//	command    payload      event
//	add        {"by": 2}    added {"by": 2}
//	reset      {}           reset {}
//
// Test: go test ./...    Build: aggregate-host build . -o __NAME__.wasm
package main

import (
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
			s.Value += p.By
		case "reset":
			s.Value = 0
		}
		return nil
	},
}

func init() { aggregate.Register(Counter) }

// main is required by the build but never runs: the host calls the aggregate's exports.
func main() {}
