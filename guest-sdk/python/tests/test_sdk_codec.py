"""The JSON mapping the component runs: init, decide, apply, schema versions, upcasting."""

from dataclasses import dataclass, field

import pytest

from aggregate_sdk import Aggregate, ApplyError, Codec, Event, Invalid, RawEvent, Rejected


class Shelf(Aggregate):
    """Books on a shelf; `added` is at schema version 2 (version 1 called `title` `name`)."""

    schema_versions = {"added": 2}

    def init(self):
        return {"books": []}

    def decide(self, state, command):
        if command.type == "add":
            title = command.str("title")
            if not title:
                raise Invalid("title must not be empty")
            return [Event("added", {"title": title})]
        if command.type == "clear":
            if not state["books"]:
                raise Rejected("nothing to clear")
            return [Event("cleared")]
        if command.type == "echo-ids":
            return [
                Event(
                    "ids",
                    {
                        "id": command.id,
                        "tenant": command.tenant_id,
                        "aggregate": command.aggregate_id,
                        "metadata": command.metadata,
                    },
                )
            ]
        if command.type == "nothing":
            return []
        raise command.unknown()

    def apply(self, state, event):
        if event.type == "added":
            state["books"].append(event.payload["title"])
        elif event.type == "cleared":
            state["books"] = []
        else:
            raise event.unknown()
        return state

    def upcast(self, event_type, schema_version, payload):
        if event_type == "added" and schema_version == 1:
            payload["title"] = payload.pop("name")
        return payload


def raw(event_type, version, payload):
    return RawEvent(event_type, version, payload)


def test_init_is_compact_json():
    assert Codec(Shelf).init() == '{"books":[]}'
    assert Codec(Shelf()).init() == '{"books":[]}'


def test_decide_maps_commands_and_events():
    codec = Codec(Shelf)
    assert codec.decide('{"books":[]}', "add", '{"title": "Dune"}') == [
        raw("added", 2, '{"title":"Dune"}')
    ]
    assert codec.decide('{"books":["Dune"]}', "clear", "{}") == [raw("cleared", 1, "{}")]
    assert codec.decide('{"books":[]}', "nothing", "{}") == []


def test_decide_passes_the_command_context():
    (event,) = Codec(Shelf).decide(
        '{"books":[]}',
        "echo-ids",
        "{}",
        command_id="c1",
        tenant_id="t1",
        aggregate_id="a1",
        metadata=[("correlation-id", "x"), ("traceparent", "y")],
    )
    assert event.payload == (
        '{"id":"c1","tenant":"t1","aggregate":"a1",'
        '"metadata":{"correlation-id":"x","traceparent":"y"}}'
    )


def test_decide_keeps_non_ascii_text():
    (event,) = Codec(Shelf).decide('{"books":[]}', "add", '{"title": "Éire \\u2603"}')
    assert event.payload == '{"title":"Éire ☃"}'


def test_domain_errors_pass_through():
    codec = Codec(Shelf)
    with pytest.raises(Rejected, match="^nothing to clear$"):
        codec.decide('{"books":[]}', "clear", "{}")
    with pytest.raises(Invalid, match="^title must not be empty$"):
        codec.decide('{"books":[]}', "add", '{"title": ""}')


@pytest.mark.parametrize(
    "payload,message",
    [
        ("{}", "invalid `add` command: missing field `title`"),
        ('{"title": 7}', "invalid `add` command: invalid type for field `title`: expected string"),
        ("[1]", "payload of `add` command must be a JSON object"),
        ('"x"', "payload of `add` command must be a JSON object"),
        ("{not json", "payload of `add` command is not JSON"),
        ('{"title": NaN}', "payload of `add` command is not JSON"),
    ],
)
def test_malformed_commands_are_invalid(payload, message):
    with pytest.raises(Invalid) as refused:
        Codec(Shelf).decide('{"books":[]}', "add", payload)
    assert refused.value.message.startswith(message)


def test_unknown_command_is_invalid():
    with pytest.raises(Invalid, match="unknown command type `burn`"):
        Codec(Shelf).decide('{"books":[]}', "burn", "{}")


def test_corrupt_state_in_decide_is_a_bug_not_a_decision():
    with pytest.raises(ValueError, match="state is not valid JSON"):
        Codec(Shelf).decide("{oops", "clear", "{}")


def test_apply_folds_oldest_first_and_upcasts_old_versions():
    codec = Codec(Shelf)
    state = codec.apply(
        codec.init(),
        [raw("added", 1, '{"name":"Old"}'), raw("added", 2, '{"title":"New"}')],
    )
    assert state == '{"books":["Old","New"]}'
    assert codec.apply(state, [raw("cleared", 1, "{}")]) == '{"books":[]}'
    assert codec.apply(state, []) == state


@pytest.mark.parametrize(
    "state,event,message",
    [
        ("nope", raw("cleared", 1, "{}"), "state is not valid JSON"),
        ('{"books":[]}', raw("added", 2, "not json"), "payload of `added` event is not JSON"),
        ('{"books":[]}', raw("added", 2, "[]"), "payload of `added` event must be a JSON object"),
        (
            '{"books":[]}',
            raw("added", 1, "{}"),
            "cannot upcast `added` event from schema version 1: missing key 'name'",
        ),
        (
            '{"books":[]}',
            raw("exploded", 1, "{}"),
            "cannot apply `exploded` event (schema version 1): unknown event type `exploded`",
        ),
        (
            '{"books":[]}',
            raw("added", 2, "{}"),
            "cannot apply `added` event (schema version 2): missing key 'title'",
        ),
    ],
)
def test_apply_reports_bad_input(state, event, message):
    with pytest.raises(ApplyError) as failed:
        Codec(Shelf).apply(state, [event])
    assert str(failed.value).startswith(message)


def test_apply_accepts_objects_shaped_like_wit_events():
    class WitEvent:
        event_type = "added"
        schema_version = 2
        payload = '{"title":"T"}'

    assert Codec(Shelf).apply('{"books":[]}', [WitEvent()]) == '{"books":["T"]}'


@dataclass
class Tally:
    total: int = 0
    names: list = field(default_factory=list)


class Counter:
    """Not derived from Aggregate: dataclass state, in-place apply, a schema_version method."""

    def init(self):
        return Tally()

    def decide(self, state, command):
        assert isinstance(state, Tally)
        return [Event("counted", {"by": command.int("by"), "name": command.str("name", "")})]

    def apply(self, state, event):
        state.total += event.payload["by"]
        state.names.append(event.payload["name"])

    def schema_version(self, event):
        return 3


def test_dataclass_state_and_in_place_apply():
    codec = Codec(Counter)
    assert codec.init() == '{"total":0,"names":[]}'
    events = codec.decide(codec.init(), "count", '{"by": 2, "name": "a"}')
    assert events == [raw("counted", 3, '{"by":2,"name":"a"}')]
    state = codec.apply(codec.init(), events + events)
    assert state == '{"total":4,"names":["a","a"]}'


def test_dataclass_state_that_does_not_fit():
    with pytest.raises(ApplyError, match="state is not a valid Tally"):
        Codec(Counter).apply('{"total":1,"extra":2}', [])
    with pytest.raises(ApplyError, match="state is not a valid Tally: expected a JSON object"):
        Codec(Counter).apply("[]", [])


class Custom(Aggregate):
    """Custom state conversion hooks: the state is a set, stored as a sorted list."""

    def init(self):
        return set()

    def load_state(self, value):
        return set(value)

    def dump_state(self, state):
        return sorted(state)

    def decide(self, state, command):
        return [Event("tagged", {"tag": command.str("tag")})]

    def apply(self, state, event):
        state.add(event.payload["tag"])


def test_custom_state_hooks():
    codec = Codec(Custom)
    assert codec.init() == "[]"
    events = codec.decide("[]", "tag", '{"tag": "b"}') + codec.decide("[]", "tag", '{"tag": "a"}')
    assert codec.apply('["c"]', events) == '["a","b","c"]'


class Broken(Aggregate):
    def decide(self, state, command):
        if command.type == "none":
            return None
        if command.type == "dict":
            return [{"type": "x"}]
        if command.type == "list-payload":
            return [Event("x", [1])]
        if command.type == "bad-version":
            return [Event("x", schema_version=-1)]
        if command.type == "nan":
            return [Event("x", {"v": float("nan")})]
        return [Event("", {})]


@pytest.mark.parametrize(
    "command_type,error,message",
    [
        ("none", TypeError, "returned None"),
        ("dict", TypeError, "must return Event values"),
        ("list-payload", TypeError, "payload of `x` event must be a dict"),
        ("bad-version", TypeError, "schema version of `x` must be a u32"),
        ("nan", ValueError, "not JSON compliant"),
        ("empty-type", TypeError, "event type must be a non-empty string"),
    ],
)
def test_contract_violations_by_the_aggregate_raise(command_type, error, message):
    with pytest.raises(error, match=message):
        Codec(Broken).decide("{}", command_type, "{}")


def test_an_object_without_the_methods_is_refused():
    with pytest.raises(TypeError, match="object has no method `init`"):
        Codec(object())


class Greedy(Aggregate):
    def apply(self, state, event):
        raise MemoryError()

    def upcast(self, event_type, schema_version, payload):
        if event_type == "old":
            raise MemoryError()
        return payload


def test_memory_errors_escape_apply_and_upcast_as_traps():
    with pytest.raises(MemoryError):
        Codec(Greedy).apply("{}", [raw("new", 1, "{}")])
    with pytest.raises(MemoryError):
        Codec(Greedy).apply("{}", [raw("old", 1, "{}")])
