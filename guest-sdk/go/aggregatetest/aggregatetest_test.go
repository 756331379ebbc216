package aggregatetest_test

import (
	"fmt"
	"strings"
	"testing"

	aggregate "aggregatehost.dev/sdk"
	"aggregatehost.dev/sdk/aggregatetest"
)

// counter: `add {"by": n}` -> `added {"by": n}`; n must be positive; at most 10 in total.
type counter struct {
	Total int `json:"total"`
}

type by struct {
	By int `json:"by"`
}

var counterDef = aggregate.Definition[counter]{
	Decide: func(s counter, c aggregate.Command) ([]aggregate.Event, error) {
		switch c.Type {
		case "add":
			var p by
			if err := c.Decode(&p); err != nil {
				return nil, err
			}
			if p.By <= 0 {
				return nil, aggregate.Invalidf("by must be positive, got %d", p.By)
			}
			if s.Total+p.By > 10 {
				return nil, aggregate.Rejectedf("total would be %d, the limit is 10", s.Total+p.By)
			}
			return []aggregate.Event{aggregate.NewEvent("added", p)}, nil
		case "noop":
			return nil, nil
		case "meta":
			return []aggregate.Event{aggregate.NewEvent("seen", map[string]string{
				"id": c.ID, "tenant": c.TenantID, "aggregate": c.AggregateID, "trace": c.Metadata["traceparent"],
			})}, nil
		}
		return nil, aggregate.UnknownCommand(c)
	},
	Apply: func(s *counter, e aggregate.Event) error {
		if e.Type != "added" {
			return nil
		}
		var p by
		if err := e.Decode(&p); err != nil {
			return err
		}
		s.Total += p.By
		return nil
	},
	SchemaVersion: func(string) uint32 { return 3 },
}

func added(n int) aggregate.Event { return aggregate.NewEvent("added", by{n}) }

func TestPassingScenarios(t *testing.T) {
	aggregatetest.Given(t, counterDef).
		When("add", by{2}).
		Then(added(2)).
		ThenState(counter{Total: 2})

	aggregatetest.Given(t, counterDef, added(4), added(5)).
		When("add", `{"by": 1}`).
		Then(aggregate.Event{Type: "added", SchemaVersion: 3, Payload: []byte(`{ "by" : 1 }`)}).
		ThenState(counter{Total: 10})

	aggregatetest.Given(t, counterDef, added(9)).
		When("add", []byte(`{"by": 2}`)).
		ThenRejected("total would be 11").
		ThenState(counter{Total: 9})

	aggregatetest.Given(t, counterDef).When("add", nil).ThenInvalid("missing field `by`")
	aggregatetest.Given(t, counterDef).When("add", by{0}).ThenInvalid("by must be positive, got 0")
	aggregatetest.Given(t, counterDef).When("close", nil).ThenInvalid("unknown command type `close`")
	aggregatetest.Given(t, counterDef).When("noop", nil).Then()

	if s := aggregatetest.Given(t, counterDef, added(1), added(2)).State(); s.Total != 3 {
		t.Errorf("Given.State = %+v", s)
	}
	o := aggregatetest.Given(t, counterDef, added(1)).When("add", by{2})
	if o.State().Total != 3 || len(o.Events()) != 1 || o.Err() != nil {
		t.Errorf("outcome: state %+v, events %v, err %v", o.State(), o.Events(), o.Err())
	}
}

func TestWhenCommandPassesIdsAndMetadata(t *testing.T) {
	aggregatetest.Given(t, counterDef).
		WhenCommand(aggregate.Command{
			ID: "c1", Type: "meta", Payload: []byte(`{}`), TenantID: "t1", AggregateID: "a1",
			Metadata: map[string]string{"traceparent": "00-abc"},
		}).
		Then(aggregate.NewEvent("seen", map[string]string{"id": "c1", "tenant": "t1", "aggregate": "a1", "trace": "00-abc"}))
}

// recorder is a testing.TB that records the first fatal message and stops the scenario.
type recorder struct {
	testing.TB
	message string
}

type stop struct{}

func (r *recorder) Helper() {}
func (r *recorder) Fatalf(format string, args ...any) {
	r.message = fmt.Sprintf(format, args...)
	panic(stop{})
}

// failure runs a scenario against a recorder and returns its failure message ("" if it passed).
func failure(t *testing.T, scenario func(tb testing.TB)) (message string) {
	t.Helper()
	r := &recorder{TB: t}
	defer func() {
		if v := recover(); v != nil {
			if _, ok := v.(stop); !ok {
				panic(v)
			}
		}
		message = r.message
	}()
	scenario(r)
	return ""
}

func TestFailuresAreReported(t *testing.T) {
	cases := []struct {
		name     string
		scenario func(tb testing.TB)
		want     []string
	}{
		{"other events", func(tb testing.TB) {
			aggregatetest.Given(tb, counterDef).When("add", by{2}).Then(added(3))
		}, []string{"when `add` {\"by\":2}", "expected events [added (schema 3) {\"by\":3}]", "got events      [added (schema 3) {\"by\":2}]"}},
		{"other schema version", func(tb testing.TB) {
			aggregatetest.Given(tb, counterDef).When("add", by{2}).Then(aggregate.Event{Type: "added", SchemaVersion: 1, Payload: []byte(`{"by":2}`)})
		}, []string{"expected events [added (schema 1)"}},
		{"events but refused", func(tb testing.TB) {
			aggregatetest.Given(tb, counterDef).When("add", by{20}).Then(added(20))
		}, []string{"expected events [added (schema 3) {\"by\":20}]", "got rejected: total would be 20, the limit is 10"}},
		{"no events expected", func(tb testing.TB) {
			aggregatetest.Given(tb, counterDef).When("add", by{1}).Then()
		}, []string{"expected events (none)"}},
		{"rejected but accepted", func(tb testing.TB) {
			aggregatetest.Given(tb, counterDef).When("add", by{1}).ThenRejected("limit")
		}, []string{"expected rejected containing \"limit\"", "got events [added (schema 3) {\"by\":1}]"}},
		{"rejected but invalid", func(tb testing.TB) {
			aggregatetest.Given(tb, counterDef).When("add", by{-1}).ThenRejected("positive")
		}, []string{"expected rejected containing \"positive\"", "got invalid: by must be positive, got -1"}},
		{"invalid with another message", func(tb testing.TB) {
			aggregatetest.Given(tb, counterDef).When("add", by{-1}).ThenInvalid("negative")
		}, []string{"expected invalid containing \"negative\""}},
		{"other state", func(tb testing.TB) {
			aggregatetest.Given(tb, counterDef, added(1)).When("add", by{1}).ThenState(counter{Total: 5})
		}, []string{"expected state {\"total\":5}", "got state      {\"total\":2}"}},
		{"history does not apply", func(tb testing.TB) {
			aggregatetest.Given(tb, counterDef, aggregate.Event{Type: "added", Payload: []byte(`{"by":"x"}`)}).When("add", by{1})
		}, []string{"given: the history does not apply: cannot read `added` event (schema version 3): invalid type for field `by`"}},
		{"payload does not encode", func(tb testing.TB) {
			aggregatetest.Given(tb, counterDef).When("add", make(chan int))
		}, []string{"when: cannot encode the add payload chan int"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := failure(t, c.scenario)
			if got == "" {
				t.Fatal("the scenario passed")
			}
			for _, w := range c.want {
				if !strings.Contains(got, w) {
					t.Errorf("failure message\n%s\ndoes not contain\n%s", got, w)
				}
			}
		})
	}
}
