// Package aggregate lets you write an event-sourced aggregate in Go and ship it as a WebAssembly
// component for the aggregate host. You write plain Go types and encoding/json; the package
// implements the component's exports (init, decide, apply of world aggregate in wit/) and hides
// the component ABI completely.
//
// An aggregate is a pure decider: Init gives the initial state, Decide turns a command into events
// (or refuses it), Apply folds one event into the state. Register it from an init function of
// package main:
//
//	type Account struct {
//		Balance int64 `json:"balance"`
//	}
//
//	type amount struct {
//		Amount int64 `json:"amount"`
//	}
//
//	func init() {
//		aggregate.Register(aggregate.Definition[Account]{
//			Decide: func(s Account, c aggregate.Command) ([]aggregate.Event, error) {
//				switch c.Type {
//				case "deposit":
//					var p amount
//					if err := c.Decode(&p); err != nil {
//						return nil, err // invalid: "invalid `deposit` command: missing field `amount`"
//					}
//					if p.Amount <= 0 {
//						return nil, aggregate.Invalidf("amount must be positive, got %d", p.Amount)
//					}
//					return []aggregate.Event{aggregate.NewEvent("deposited", p)}, nil
//				}
//				return nil, aggregate.UnknownCommand(c)
//			},
//			Apply: func(s *Account, e aggregate.Event) error {
//				var p amount
//				if err := e.Decode(&p); err != nil {
//					return err
//				}
//				s.Balance += p.Amount
//				return nil
//			},
//		})
//	}
//
//	func main() {}
//
// State, command payloads and event payloads are JSON objects. Command.Decode treats every field
// as required unless it is a pointer or interface or its json tag says omitempty or omitzero, so
// a missing field is an invalid command, as it would be with serde in the Rust SDK.
//
// Test with package aggregatehost.dev/sdk/aggregatetest (given/when/then, native go test). Build
// the component with `aggregate-host build <dir> -o <out.wasm>` (see README.md).
package aggregate

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
)

// Command is a command addressed to one aggregate, as the host delivers it.
type Command struct {
	// ID is the command's unique id (idempotency key, causation id of its events).
	ID string
	// Type is the command's name, e.g. "deposit".
	Type string
	// Payload is the command's body: a JSON object. Read it with Decode.
	Payload json.RawMessage
	// TenantID is the tenant the command runs for; empty in single-tenant mode.
	TenantID string
	// AggregateID is the aggregate the command is addressed to.
	AggregateID string
	// Metadata holds the correlation id, trace parent and other gateway metadata.
	Metadata map[string]string
}

// Event is a fact the aggregate decided, as it is stored: a type, the version of its payload
// schema and a JSON-object payload. Build one with NewEvent; read it with Decode.
type Event struct {
	// Type is the event's name, e.g. "deposited".
	Type string
	// SchemaVersion is the version of this event type's payload schema. Zero in an event
	// returned by Decide means Definition.SchemaVersion (default 1).
	SchemaVersion uint32
	// Payload is the event's body: a JSON object.
	Payload json.RawMessage
}

// NewEvent returns an event of type eventType whose payload is payload encoded with encoding/json
// (nil gives {}). Its schema version is left zero, meaning Definition.SchemaVersion.
//
// NewEvent panics if payload does not encode to a JSON object: that is a bug in the aggregate,
// and the host sees a trap.
func NewEvent(eventType string, payload any) Event {
	if payload == nil {
		return Event{Type: eventType, Payload: json.RawMessage("{}")}
	}
	b, err := json.Marshal(payload)
	if err != nil {
		panic(fmt.Sprintf("aggregate.NewEvent(%q): cannot encode payload %T: %v", eventType, payload, err))
	}
	if !isObject(b) {
		panic(fmt.Sprintf("aggregate.NewEvent(%q): payload %T must encode to a JSON object, got %s", eventType, payload, b))
	}
	return Event{Type: eventType, Payload: b}
}

// Decode decodes the event's payload into v (a pointer) with encoding/json. An error names the
// event type and schema version; return it from Apply.
func (e Event) Decode(v any) error {
	if err := json.Unmarshal(e.Payload, v); err != nil {
		return fmt.Errorf("cannot read `%s` event (schema version %d): %s", e.Type, e.SchemaVersion, describe(err))
	}
	return nil
}

// Kind says why Decide produced no events.
type Kind int

const (
	// KindRejected: a business rule refused the command (the host answers 422).
	KindRejected Kind = iota + 1
	// KindInvalid: the command is malformed (the host answers 400).
	KindInvalid
)

func (k Kind) String() string {
	switch k {
	case KindRejected:
		return "rejected"
	case KindInvalid:
		return "invalid"
	}
	return fmt.Sprintf("Kind(%d)", int(k))
}

// Error is a refusal returned by Decide: the WIT decide-error. Make one with Rejected, Invalid or
// their f variants; Decide may also return it wrapped (fmt.Errorf with %w).
type Error struct {
	Kind    Kind
	Message string
}

func (e *Error) Error() string { return e.Kind.String() + ": " + e.Message }

// Rejected returns an error saying a business rule refused the command.
func Rejected(message string) error { return &Error{Kind: KindRejected, Message: message} }

// Rejectedf is Rejected with a fmt.Sprintf message.
func Rejectedf(format string, args ...any) error { return Rejected(fmt.Sprintf(format, args...)) }

// Invalid returns an error saying the command is malformed.
func Invalid(message string) error { return &Error{Kind: KindInvalid, Message: message} }

// Invalidf is Invalid with a fmt.Sprintf message.
func Invalidf(format string, args ...any) error { return Invalid(fmt.Sprintf(format, args...)) }

// UnknownCommand returns the invalid error for a command type the aggregate does not know:
// "unknown command type `close`".
func UnknownCommand(c Command) error { return Invalidf("unknown command type `%s`", c.Type) }

// AsError returns the *Error in err's chain, or nil.
func AsError(err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	return nil
}

// Definition is an aggregate with state type S. Decide and Apply are required.
type Definition[S any] struct {
	// Init returns the state of an aggregate without events. Default: the zero S.
	Init func() S
	// Decide returns the events a command produces in the given state, or an error made with
	// Rejected or Invalid (a Command.Decode error is already Invalid). Any other error is a bug:
	// the SDK panics and the host sees a trap.
	Decide func(state S, c Command) ([]Event, error)
	// Apply folds one event, oldest first, into the state. An error fails the whole apply.
	Apply func(state *S, e Event) error
	// SchemaVersion gives the current schema version of an event type, stamped on events that
	// Decide returns with SchemaVersion 0. Default: 1.
	SchemaVersion func(eventType string) uint32
	// Upcast, if set, runs on every stored event before Apply and returns its payload in the
	// current schema; Apply then sees the event with that payload and the current SchemaVersion.
	Upcast func(e Event) (json.RawMessage, error)
}

// Register makes def the aggregate this component exports. Call it once, from an init function.
// It panics if Decide or Apply is nil or an aggregate is already registered.
func Register[S any](def Definition[S]) {
	if def.Decide == nil || def.Apply == nil {
		panic("aggregate.Register: Definition.Decide and Definition.Apply are required")
	}
	if registered != nil {
		panic("aggregate.Register: an aggregate is already registered")
	}
	registered = def
}

// codec is what the component's exports call: a Definition with its type parameter erased.
type codec interface {
	InitJSON() string
	DecideJSON(state string, c Command) ([]Event, error)
	ApplyJSON(state string, events []Event) (string, error)
}

var registered codec

// InitJSON returns the initial state as JSON: what the component's init export returns.
func (d Definition[S]) InitJSON() string {
	return encodeState(d.initial())
}

// DecideJSON runs Decide on a JSON state: what the component's decide export runs. The returned
// events have their schema version stamped; the error, if any, is an *Error.
//
// It panics (a trap in the component) if state is not a valid S, Decide returns an error that is
// not an *Error, or an event has no type or a payload that is not a JSON object.
func (d Definition[S]) DecideJSON(state string, c Command) ([]Event, error) {
	var s S
	if err := json.Unmarshal([]byte(state), &s); err != nil {
		panic(fmt.Sprintf("aggregate: state is not a valid %s: %s", typeName[S](), describe(err)))
	}
	events, err := d.Decide(s, c)
	if err != nil {
		if e := AsError(err); e != nil {
			return nil, e
		}
		panic(fmt.Sprintf("aggregate: Decide(%q) returned an error that is neither aggregate.Rejected nor aggregate.Invalid: %v", c.Type, err))
	}
	out := make([]Event, len(events))
	for i, e := range events {
		if e.Type == "" {
			panic(fmt.Sprintf("aggregate: Decide(%q) returned event %d without a type", c.Type, i))
		}
		if len(e.Payload) == 0 {
			e.Payload = json.RawMessage("{}")
		} else if !isObject(e.Payload) {
			panic(fmt.Sprintf("aggregate: Decide(%q) returned a `%s` event whose payload is not a JSON object: %.100s", c.Type, e.Type, e.Payload))
		}
		if e.SchemaVersion == 0 {
			e.SchemaVersion = d.CurrentSchemaVersion(e.Type)
		}
		out[i] = e
	}
	return out, nil
}

// ApplyJSON folds events, oldest first, into a JSON state and returns the new state as JSON: what
// the component's apply export runs (Upcast, then Apply, for each event).
func (d Definition[S]) ApplyJSON(state string, events []Event) (string, error) {
	var s S
	if err := json.Unmarshal([]byte(state), &s); err != nil {
		return "", fmt.Errorf("state is not a valid %s: %s", typeName[S](), describe(err))
	}
	for _, e := range events {
		if d.Upcast != nil {
			payload, err := d.Upcast(e)
			if err != nil {
				return "", fmt.Errorf("cannot upcast `%s` event from schema version %d: %v", e.Type, e.SchemaVersion, err)
			}
			e.Payload, e.SchemaVersion = payload, d.CurrentSchemaVersion(e.Type)
		}
		if err := d.Apply(&s, e); err != nil {
			return "", err
		}
	}
	return encodeState(s), nil
}

func (d Definition[S]) initial() S {
	if d.Init == nil {
		var s S
		return s
	}
	return d.Init()
}

// CurrentSchemaVersion returns the schema version the definition stamps on new events of
// eventType: Definition.SchemaVersion, or 1 when that is nil.
func (d Definition[S]) CurrentSchemaVersion(eventType string) uint32 {
	if d.SchemaVersion == nil {
		return 1
	}
	return d.SchemaVersion(eventType)
}

func encodeState[S any](s S) string {
	b, err := json.Marshal(s)
	if err != nil {
		panic(fmt.Sprintf("aggregate: cannot encode state %s: %v", typeName[S](), err))
	}
	return string(b)
}

func typeName[S any]() string {
	return reflect.TypeFor[S]().String()
}
