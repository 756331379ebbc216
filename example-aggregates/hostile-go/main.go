// Command hostile-go is a misbehaving Go aggregate for the host's sandboxing and stress tests,
// written with the Go guest SDK. Its state is always {} and apply accepts any event.
//
//	command  payload        behaviour
//	ok       {}             one event `done` {}
//	echo     {"size": n}    one event `echoed` {"data": "xx…"} whose string is n bytes
//	spin     {}             loops forever (fuel / epoch deadline)
//	hog      {}             allocates and touches 1 MiB blocks forever, keeping them (memory limit)
//	panic    {}             a Go panic: the host sees a trap
//
// Any other command type is invalid ("unknown command type `x`").
//
// Build: aggregate-host build . -o hostile_go.wasm
package main

import (
	"strings"

	aggregate "aggregatehost.dev/sdk"
)

// State is always empty.
type State struct{}

// Echo is the payload of `echo`.
type Echo struct {
	Size uint32 `json:"size"`
}

// Echoed is the payload of `echoed`.
type Echoed struct {
	Data string `json:"data"`
}

// Hostile is the aggregate definition.
var Hostile = aggregate.Definition[State]{
	Decide: decide,
	Apply:  func(*State, aggregate.Event) error { return nil },
}

func init() { aggregate.Register(Hostile) }

func main() {}

var (
	spins uint64   // written by spin so the loop has an effect
	hoard [][]byte // what hog keeps reachable
)

func decide(_ State, c aggregate.Command) ([]aggregate.Event, error) {
	switch c.Type {
	case "ok":
		return []aggregate.Event{aggregate.NewEvent("done", nil)}, nil
	case "echo":
		var p Echo
		if err := c.Decode(&p); err != nil {
			return nil, err
		}
		return []aggregate.Event{aggregate.NewEvent("echoed", Echoed{Data: strings.Repeat("x", int(p.Size))})}, nil
	case "spin":
		for {
			spins++
		}
	case "hog":
		for {
			block := make([]byte, 1<<20)
			for i := range block {
				block[i] = 1
			}
			hoard = append(hoard, block)
		}
	case "panic":
		panic("boom")
	}
	return nil, aggregate.UnknownCommand(c)
}
