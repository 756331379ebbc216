// Package aggregatetest runs given/when/then tests of an aggregate.Definition natively with
// go test: no wasm, no host.
//
// Given takes the history (events already stored, oldest first), When the command, and the Then
// methods assert on the outcome, failing the test with a readable report on mismatch. Everything
// goes through the same JSON mapping the component's exports run (Definition.InitJSON,
// DecideJSON, ApplyJSON), so a test also covers the state, payload and event encodings. Events
// are compared by type, schema version and payload JSON (key order does not matter).
//
//	func TestWithdraw(t *testing.T) {
//		aggregatetest.Given(t, BankAccount,
//			aggregate.NewEvent("opened", Open{Owner: "alice"}),
//			aggregate.NewEvent("deposited", Amount{100}),
//		).
//			When("withdraw", Amount{30}).
//			Then(aggregate.NewEvent("withdrawn", Amount{30})).
//			ThenState(Account{Opened: true, Owner: "alice", Balance: 70})
//
//		aggregatetest.Given(t, BankAccount).
//			When("withdraw", `{"amount": 10}`).
//			ThenRejected("account is not open")
//	}
package aggregatetest

import (
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"testing"

	aggregate "aggregatehost.dev/sdk"
)

// Scenario is an aggregate with a history; call When next.
type Scenario[S any] struct {
	t       testing.TB
	def     aggregate.Definition[S]
	history []aggregate.Event
}

// Given starts a scenario for def from its history, oldest first. An event with SchemaVersion 0
// gets the definition's current schema version, as if Decide had produced it.
func Given[S any](t testing.TB, def aggregate.Definition[S], history ...aggregate.Event) *Scenario[S] {
	t.Helper()
	return &Scenario[S]{t: t, def: def, history: stamp(def, history)}
}

// State returns the state after the history, as ApplyJSON computes it from InitJSON.
func (g *Scenario[S]) State() S {
	g.t.Helper()
	return decodeState[S](g.t, g.stateJSON())
}

func (g *Scenario[S]) stateJSON() string {
	g.t.Helper()
	state, err := g.def.ApplyJSON(g.def.InitJSON(), g.history)
	if err != nil {
		g.t.Fatalf("given: the history does not apply: %v", err)
	}
	return state
}

// When runs a command of type commandType. payload is the command's JSON payload: a string,
// []byte or json.RawMessage is taken as JSON text, nil means {}, anything else is encoded with
// encoding/json.
func (g *Scenario[S]) When(commandType string, payload any) *Outcome[S] {
	g.t.Helper()
	var raw json.RawMessage
	switch p := payload.(type) {
	case nil:
		raw = json.RawMessage("{}")
	case string:
		raw = json.RawMessage(p)
	case []byte:
		raw = p
	case json.RawMessage:
		raw = p
	default:
		b, err := json.Marshal(p)
		if err != nil {
			g.t.Fatalf("when: cannot encode the %s payload %T: %v", commandType, payload, err)
		}
		raw = b
	}
	return g.WhenCommand(aggregate.Command{
		ID:          "00000000-0000-7000-8000-000000000001",
		Type:        commandType,
		Payload:     raw,
		TenantID:    "test-tenant",
		AggregateID: "00000000-0000-7000-8000-000000000002",
	})
}

// WhenCommand runs a command given in full (to set its ids or metadata).
func (g *Scenario[S]) WhenCommand(c aggregate.Command) *Outcome[S] {
	g.t.Helper()
	state := g.stateJSON()
	o := &Outcome[S]{t: g.t, def: g.def, command: fmt.Sprintf("`%s` %s", c.Type, c.Payload), before: state}
	o.events, o.err = g.def.DecideJSON(state, c)
	return o
}

// Outcome is what a command did; assert on it with the Then methods, which return the outcome
// so they chain.
type Outcome[S any] struct {
	t       testing.TB
	def     aggregate.Definition[S]
	command string
	before  string
	events  []aggregate.Event
	err     error
}

// Events returns the events the command produced (nil if it was refused).
func (o *Outcome[S]) Events() []aggregate.Event { return o.events }

// Err returns the refusal (an *aggregate.Error), or nil.
func (o *Outcome[S]) Err() error { return o.err }

// Then asserts the command was accepted and produced exactly these events, in order (none: it
// produced no events). An expected event with SchemaVersion 0 means the current version.
func (o *Outcome[S]) Then(want ...aggregate.Event) *Outcome[S] {
	o.t.Helper()
	if o.err != nil {
		o.t.Fatalf("when %s:\n  expected events %s\n  got %v", o.command, list(stamp(o.def, want)), o.err)
	}
	want = stamp(o.def, want)
	if !sameEvents(o.events, want) {
		o.t.Fatalf("when %s:\n  expected events %s\n  got events      %s", o.command, list(want), list(o.events))
	}
	return o
}

// ThenRejected asserts a business rule refused the command with a message containing substr.
func (o *Outcome[S]) ThenRejected(substr string) *Outcome[S] {
	o.t.Helper()
	o.refused(aggregate.KindRejected, substr)
	return o
}

// ThenInvalid asserts the command was refused as malformed with a message containing substr.
func (o *Outcome[S]) ThenInvalid(substr string) *Outcome[S] {
	o.t.Helper()
	o.refused(aggregate.KindInvalid, substr)
	return o
}

func (o *Outcome[S]) refused(kind aggregate.Kind, substr string) {
	o.t.Helper()
	if o.err == nil {
		o.t.Fatalf("when %s:\n  expected %s containing %q\n  got events %s", o.command, kind, substr, list(o.events))
	}
	e := aggregate.AsError(o.err)
	if e.Kind != kind || !strings.Contains(e.Message, substr) {
		o.t.Fatalf("when %s:\n  expected %s containing %q\n  got %v", o.command, kind, substr, o.err)
	}
}

// ThenState asserts the state after the command: the produced events applied to the state
// before it (or that state unchanged when the command was refused). States are compared as JSON.
func (o *Outcome[S]) ThenState(want S) *Outcome[S] {
	o.t.Helper()
	got := o.stateJSON()
	wantJSON, err := json.Marshal(want)
	if err != nil {
		o.t.Fatalf("then state: cannot encode the expected state: %v", err)
	}
	if !sameJSON([]byte(got), wantJSON) {
		o.t.Fatalf("when %s:\n  expected state %s\n  got state      %s", o.command, wantJSON, got)
	}
	return o
}

// State returns the state after the command (see ThenState) for assertions of your own.
func (o *Outcome[S]) State() S {
	o.t.Helper()
	return decodeState[S](o.t, o.stateJSON())
}

func (o *Outcome[S]) stateJSON() string {
	o.t.Helper()
	if o.err != nil {
		return o.before
	}
	state, err := o.def.ApplyJSON(o.before, o.events)
	if err != nil {
		o.t.Fatalf("when %s: the produced events do not apply: %v", o.command, err)
	}
	return state
}

func decodeState[S any](t testing.TB, state string) S {
	t.Helper()
	var s S
	if err := json.Unmarshal([]byte(state), &s); err != nil {
		t.Fatalf("state %s does not decode: %v", state, err)
	}
	return s
}

func stamp[S any](def aggregate.Definition[S], events []aggregate.Event) []aggregate.Event {
	out := make([]aggregate.Event, len(events))
	for i, e := range events {
		if e.SchemaVersion == 0 {
			e.SchemaVersion = def.CurrentSchemaVersion(e.Type)
		}
		out[i] = e
	}
	return out
}

func sameEvents(got, want []aggregate.Event) bool {
	if len(got) != len(want) {
		return false
	}
	for i := range got {
		if got[i].Type != want[i].Type || got[i].SchemaVersion != want[i].SchemaVersion ||
			!sameJSON(got[i].Payload, want[i].Payload) {
			return false
		}
	}
	return true
}

func sameJSON(a, b []byte) bool {
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return string(a) == string(b)
	}
	return reflect.DeepEqual(x, y)
}

func list(events []aggregate.Event) string {
	if len(events) == 0 {
		return "(none)"
	}
	parts := make([]string, len(events))
	for i, e := range events {
		parts[i] = fmt.Sprintf("%s (schema %d) %s", e.Type, e.SchemaVersion, e.Payload)
	}
	return "[" + strings.Join(parts, ", ") + "]"
}
