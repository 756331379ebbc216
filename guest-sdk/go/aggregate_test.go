package aggregate

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

// shelf is a small aggregate for these tests: a list of book titles.
type shelf struct {
	Books []string `json:"books"`
}

type addBook struct {
	Title string `json:"title"`
}

var shelfDef = Definition[shelf]{
	Init: func() shelf { return shelf{Books: []string{}} },
	Decide: func(s shelf, c Command) ([]Event, error) {
		switch c.Type {
		case "add":
			var p addBook
			if err := c.Decode(&p); err != nil {
				return nil, err
			}
			if p.Title == "" {
				return nil, Invalid("title must not be empty")
			}
			return []Event{NewEvent("added", p)}, nil
		case "clear":
			if len(s.Books) == 0 {
				return nil, fmt.Errorf("clear: %w", Rejected("nothing to clear"))
			}
			return []Event{NewEvent("cleared", nil)}, nil
		case "fail":
			return nil, errors.New("disk on fire")
		case "untyped":
			return []Event{{Payload: json.RawMessage(`{}`)}}, nil
		case "array":
			return []Event{{Type: "x", Payload: json.RawMessage(`[1]`)}}, nil
		case "bare":
			return []Event{{Type: "bare", SchemaVersion: 7}}, nil
		}
		return nil, UnknownCommand(c)
	},
	Apply: func(s *shelf, e Event) error {
		switch e.Type {
		case "added":
			var p addBook
			if err := e.Decode(&p); err != nil {
				return err
			}
			s.Books = append(s.Books, p.Title)
		case "cleared":
			s.Books = []string{}
		default:
			return fmt.Errorf("unknown event type `%s`", e.Type)
		}
		return nil
	},
	SchemaVersion: func(eventType string) uint32 {
		if eventType == "added" {
			return 2
		}
		return 1
	},
	// v1 of `added` called the field `name`.
	Upcast: func(e Event) (json.RawMessage, error) {
		if e.Type != "added" || e.SchemaVersion != 1 {
			return e.Payload, nil
		}
		var v1 struct {
			Name *string `json:"name"`
		}
		if err := json.Unmarshal(e.Payload, &v1); err != nil || v1.Name == nil {
			return nil, errors.New("missing name")
		}
		return json.Marshal(addBook{Title: *v1.Name})
	},
}

func cmd(commandType, payload string) Command {
	return Command{Type: commandType, Payload: json.RawMessage(payload)}
}

func mustPanic(t *testing.T, contains string, f func()) {
	t.Helper()
	defer func() {
		t.Helper()
		r := recover()
		if r == nil {
			t.Fatalf("expected a panic containing %q", contains)
		}
		if !strings.Contains(fmt.Sprint(r), contains) {
			t.Fatalf("panic %q does not contain %q", r, contains)
		}
	}()
	f()
}

func TestInitJSON(t *testing.T) {
	if got := shelfDef.InitJSON(); got != `{"books":[]}` {
		t.Errorf("InitJSON = %s", got)
	}
	zero := Definition[shelf]{}
	if got := zero.InitJSON(); got != `{"books":null}` {
		t.Errorf("InitJSON without Init = %s", got)
	}
}

func TestDecideJSONStampsVersionsAndPayloads(t *testing.T) {
	events, err := shelfDef.DecideJSON(`{"books":[]}`, cmd("add", `{"title":"Dune"}`))
	if err != nil {
		t.Fatal(err)
	}
	if len(events) != 1 || events[0].Type != "added" || events[0].SchemaVersion != 2 || string(events[0].Payload) != `{"title":"Dune"}` {
		t.Errorf("events = %+v", events)
	}
	events, err = shelfDef.DecideJSON(`{"books":["Dune"]}`, cmd("clear", `{}`))
	if err != nil || len(events) != 1 || events[0].SchemaVersion != 1 || string(events[0].Payload) != `{}` {
		t.Errorf("clear = %+v, %v", events, err)
	}
	events, err = shelfDef.DecideJSON(`{"books":[]}`, cmd("bare", `{}`))
	if err != nil || events[0].SchemaVersion != 7 || string(events[0].Payload) != `{}` {
		t.Errorf("bare = %+v, %v", events, err)
	}
}

func TestDecideJSONRefusals(t *testing.T) {
	cases := []struct {
		command Command
		kind    Kind
		message string
	}{
		{cmd("clear", `{}`), KindRejected, "nothing to clear"},
		{cmd("add", `{"title":""}`), KindInvalid, "title must not be empty"},
		{cmd("add", `{}`), KindInvalid, "invalid `add` command: missing field `title`"},
		{cmd("add", `{"title": 7}`), KindInvalid, "invalid `add` command: invalid type for field `title`: got number, expected string"},
		{cmd("add", `[1]`), KindInvalid, "payload of `add` command must be a JSON object"},
		{cmd("add", `"x"`), KindInvalid, "payload of `add` command must be a JSON object"},
		{cmd("add", `{not json`), KindInvalid, "payload of `add` command is not JSON: invalid character 'n' looking for beginning of object key string"},
		{cmd("add", ``), KindInvalid, "payload of `add` command is not JSON: unexpected end of JSON input"},
		{cmd("close", `{}`), KindInvalid, "unknown command type `close`"},
	}
	for _, c := range cases {
		events, err := shelfDef.DecideJSON(`{"books":[]}`, c.command)
		e := AsError(err)
		if events != nil || e == nil || e.Kind != c.kind || e.Message != c.message {
			t.Errorf("%s %s: got %v, %v; want %s %q", c.command.Type, c.command.Payload, events, err, c.kind, c.message)
		}
	}
}

func TestDecideJSONPanicsOnBugs(t *testing.T) {
	mustPanic(t, "state is not a valid aggregate.shelf", func() { _, _ = shelfDef.DecideJSON(`[]`, cmd("clear", `{}`)) })
	mustPanic(t, "neither aggregate.Rejected nor aggregate.Invalid: disk on fire", func() { _, _ = shelfDef.DecideJSON(`{}`, cmd("fail", `{}`)) })
	mustPanic(t, "without a type", func() { _, _ = shelfDef.DecideJSON(`{}`, cmd("untyped", `{}`)) })
	mustPanic(t, "payload is not a JSON object: [1]", func() { _, _ = shelfDef.DecideJSON(`{}`, cmd("array", `{}`)) })
}

func TestApplyJSONFoldsAndUpcasts(t *testing.T) {
	state, err := shelfDef.ApplyJSON(shelfDef.InitJSON(), []Event{
		{Type: "added", SchemaVersion: 1, Payload: json.RawMessage(`{"name":"Old"}`)},
		{Type: "added", SchemaVersion: 2, Payload: json.RawMessage(`{"title":"New"}`)},
	})
	if err != nil || state != `{"books":["Old","New"]}` {
		t.Fatalf("ApplyJSON = %s, %v", state, err)
	}
	state, err = shelfDef.ApplyJSON(state, []Event{{Type: "cleared", SchemaVersion: 1, Payload: json.RawMessage(`{}`)}})
	if err != nil || state != `{"books":[]}` {
		t.Fatalf("ApplyJSON = %s, %v", state, err)
	}
	state, err = shelfDef.ApplyJSON(state, nil)
	if err != nil || state != `{"books":[]}` {
		t.Fatalf("ApplyJSON of no events = %s, %v", state, err)
	}
}

func TestApplyJSONErrors(t *testing.T) {
	cases := []struct {
		state  string
		events []Event
		want   string
	}{
		{`[]`, nil, "state is not a valid aggregate.shelf: invalid type: got array, expected aggregate.shelf"},
		{`{}`, []Event{{Type: "added", SchemaVersion: 1, Payload: json.RawMessage(`{}`)}}, "cannot upcast `added` event from schema version 1: missing name"},
		{`{}`, []Event{{Type: "added", SchemaVersion: 2, Payload: json.RawMessage(`{"title":3}`)}}, "cannot read `added` event (schema version 2): invalid type for field `title`: got number, expected string"},
		{`{}`, []Event{{Type: "burned", SchemaVersion: 1, Payload: json.RawMessage(`{}`)}}, "unknown event type `burned`"},
	}
	for _, c := range cases {
		state, err := shelfDef.ApplyJSON(c.state, c.events)
		if err == nil || err.Error() != c.want {
			t.Errorf("ApplyJSON(%s, %v) = %q, %v; want error %q", c.state, c.events, state, err, c.want)
		}
	}
}

func TestNewEvent(t *testing.T) {
	if e := NewEvent("cleared", nil); e.Type != "cleared" || e.SchemaVersion != 0 || string(e.Payload) != `{}` {
		t.Errorf("NewEvent(nil) = %+v", e)
	}
	if e := NewEvent("m", map[string]int{"a": 1}); string(e.Payload) != `{"a":1}` {
		t.Errorf("NewEvent(map) = %+v", e)
	}
	mustPanic(t, "must encode to a JSON object, got 3", func() { NewEvent("n", 3) })
	mustPanic(t, "cannot encode payload chan int", func() { NewEvent("c", make(chan int)) })
}

func TestErrors(t *testing.T) {
	if got := Rejectedf("balance %d", 3).Error(); got != "rejected: balance 3" {
		t.Errorf("Rejectedf = %q", got)
	}
	if got := Invalidf("got %d", -1).Error(); got != "invalid: got -1" {
		t.Errorf("Invalidf = %q", got)
	}
	wrapped := fmt.Errorf("outer: %w", Invalid("inner"))
	if e := AsError(wrapped); e == nil || e.Kind != KindInvalid || e.Message != "inner" {
		t.Errorf("AsError(wrapped) = %v", e)
	}
	if AsError(errors.New("plain")) != nil || AsError(nil) != nil {
		t.Error("AsError of a plain error or nil is not nil")
	}
	if got := UnknownCommand(Command{Type: "close"}).Error(); got != "invalid: unknown command type `close`" {
		t.Errorf("UnknownCommand = %q", got)
	}
	if Kind(9).String() != "Kind(9)" {
		t.Error(Kind(9).String())
	}
}

func TestRegister(t *testing.T) {
	t.Cleanup(func() { registered = nil })
	mustPanic(t, "Decide and Definition.Apply are required", func() { Register(Definition[shelf]{}) })
	Register(shelfDef)
	if registered == nil || registered.InitJSON() != `{"books":[]}` {
		t.Fatal("not registered")
	}
	mustPanic(t, "already registered", func() { Register(shelfDef) })
}

// Types for the Decode tests.

type address struct {
	City string `json:"city"`
	Zip  string `json:"zip,omitempty"`
}

type line struct {
	SKU string `json:"sku"`
	Qty int    `json:"qty"`
}

type Audit struct {
	By string `json:"by"`
}

type Extra struct {
	Note string `json:"note"`
}

type order struct {
	Audit                      // embedded: `by` is required at the top level
	*Extra                     // embedded pointer: `note` is optional
	Customer string            `json:"customer"`
	Ship     address           `json:"ship"`
	Bill     *address          `json:"bill"`
	Lines    []line            `json:"lines"`
	Tags     []string          `json:"tags,omitempty"`
	Discount int               `json:"discount,omitzero"`
	Meta     any               `json:"meta"`
	When     time.Time         `json:"when"` // a json.Unmarshaler: presence checked, contents not
	Raw      json.RawMessage   `json:"raw,omitempty"`
	Secret   string            `json:"-"`
	Extras   map[string]int    `json:"extras,omitempty"`
	Ptrs     []*line           `json:"ptrs,omitempty"`
	internal string            //nolint:unused // unexported: ignored
	Nested   [][]address       `json:"nested,omitempty"`
	Fixed    [1]line           `json:"fixed,omitempty"`
	Untagged string            `json:",omitempty"`
	Named    map[string]string `json:"named,omitempty"`
}

const fullOrder = `{"by":"ops","customer":"ada","ship":{"city":"Paris"},"lines":[{"sku":"a","qty":1}],"when":"2025-01-01T00:00:00Z"}`

func TestDecodeRequiredFields(t *testing.T) {
	var o order
	if err := cmd("order", fullOrder).Decode(&o); err != nil {
		t.Fatalf("full order: %v", err)
	}
	if o.Customer != "ada" || o.Ship.City != "Paris" || o.By != "ops" || o.Lines[0].Qty != 1 {
		t.Errorf("decoded %+v", o)
	}
	cases := []struct {
		payload string
		want    string
	}{
		{`{"customer":"ada","ship":{"city":"Paris"},"lines":[],"when":"2025-01-01T00:00:00Z"}`, "missing field `by`"},
		{`{"by":"ops","ship":{"city":"Paris"},"lines":[],"when":"2025-01-01T00:00:00Z"}`, "missing field `customer`"},
		{`{"by":"ops","customer":null,"ship":{"city":"Paris"},"lines":[],"when":"2025-01-01T00:00:00Z"}`, "field `customer` must not be null"},
		{`{"by":"ops","customer":"ada","ship":{},"lines":[],"when":"2025-01-01T00:00:00Z"}`, "missing field `ship.city`"},
		{`{"by":"ops","customer":"ada","ship":{"city":"P"},"bill":{"zip":"1"},"lines":[],"when":"2025-01-01T00:00:00Z"}`, "missing field `bill.city`"},
		{`{"by":"ops","customer":"ada","ship":{"city":"P"},"lines":[{"sku":"a","qty":1},{"sku":"b"}],"when":"2025-01-01T00:00:00Z"}`, "missing field `lines[1].qty`"},
		{`{"by":"ops","customer":"ada","ship":{"city":"P"},"lines":[],"ptrs":[null,{"qty":1}],"when":"2025-01-01T00:00:00Z"}`, "missing field `ptrs[1].sku`"},
		{`{"by":"ops","customer":"ada","ship":{"city":"P"},"lines":[],"nested":[[{"zip":"1"}]],"when":"2025-01-01T00:00:00Z"}`, "missing field `nested[0][0].city`"},
		{`{"by":"ops","customer":"ada","ship":{"city":"P"},"lines":[]}`, "missing field `when`"},
		{`{"by":"ops","customer":"ada","ship":{"city":"P"},"lines":[],"fixed":[{"qty":1}],"when":"2025-01-01T00:00:00Z"}`, "missing field `fixed[0].sku`"},
		{`{"by":"ops","customer":"ada","ship":{"city":"P"},"lines":"x","when":"2025-01-01T00:00:00Z"}`, "invalid type for field `lines`: got string, expected []aggregate.line"},
		{`{"by":"ops","customer":"ada","ship":"x","lines":[],"when":"2025-01-01T00:00:00Z"}`, "invalid type for field `ship`: got string, expected aggregate.address"},
		{`{"by":"ops","customer":"ada","ship":{"city":"P"},"lines":[{"sku":"a","qty":1.5}],"when":"2025-01-01T00:00:00Z"}`, "invalid type for field `lines[0].qty`: got number 1.5, expected int"},
		{`{"by":"ops","customer":"ada","ship":{"city":"P"},"lines":[],"when":"yesterday"}`, "parsing time"},
	}
	for _, c := range cases {
		var o order
		err := cmd("order", c.payload).Decode(&o)
		e := AsError(err)
		if e == nil || e.Kind != KindInvalid || !strings.HasPrefix(e.Message, "invalid `order` command: ") || !strings.Contains(e.Message, c.want) {
			t.Errorf("%s:\n  got  %v\n  want invalid containing %q", c.payload, err, c.want)
		}
	}
}

func TestDecodeAcceptsOptionalAndDefaultedFields(t *testing.T) {
	var o order
	payload := `{"by":"ops","customer":"ada","ship":{"city":"P"},"lines":[],"bill":null,"ptrs":[null],"note":"n","fixed":[],"when":"2025-01-01T00:00:00Z"}`
	if err := cmd("order", payload).Decode(&o); err != nil || o.Extra == nil || o.Note != "n" {
		t.Errorf("optional fields: %+v, %v", o, err)
	}
	// A value already in v before Decode is a default: the field may be absent.
	o = order{Customer: "default"}
	if err := cmd("order", `{"by":"ops","ship":{"city":"P"},"lines":[],"when":"2025-01-01T00:00:00Z"}`).Decode(&o); err != nil || o.Customer != "default" {
		t.Errorf("defaulted field: %+v, %v", o, err)
	}
	// Zero values that are present are fine.
	var p struct {
		N int    `json:"n"`
		S string `json:"s"`
		B bool   `json:"b"`
	}
	if err := cmd("zero", `{"n":0,"s":"","b":false}`).Decode(&p); err != nil {
		t.Errorf("present zero values: %v", err)
	}
}

func TestDecodeMatchesKeysLikeEncodingJSON(t *testing.T) {
	var p addBook
	if err := cmd("add", `{"Title":"Dune"}`).Decode(&p); err != nil || p.Title != "Dune" {
		t.Errorf("case-insensitive key: %+v, %v", p, err)
	}
	var m map[string]int
	if err := cmd("m", `{"a":1}`).Decode(&m); err != nil || m["a"] != 1 {
		t.Errorf("map: %v, %v", m, err)
	}
	var anything any
	if err := cmd("m", ` {"a":1} `).Decode(&anything); err != nil {
		t.Errorf("any: %v", err)
	}
}

func TestEventDecode(t *testing.T) {
	var p addBook
	e := Event{Type: "added", SchemaVersion: 2, Payload: json.RawMessage(`{"title":"Dune"}`)}
	if err := e.Decode(&p); err != nil || p.Title != "Dune" {
		t.Errorf("Decode = %+v, %v", p, err)
	}
	e.Payload = json.RawMessage(`{not json`)
	if err := e.Decode(&p); err == nil || !strings.HasPrefix(err.Error(), "cannot read `added` event (schema version 2): invalid character") {
		t.Errorf("Decode of bad JSON: %v", err)
	}
}
