// The WIT-level behaviour of defineAggregate(...).component: what the component exports.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  defineAggregate,
  event,
  rejected,
  invalid,
  field,
  commandContext,
  unknownCommand,
  unknownEvent,
  DecideError,
} from '../aggregate.js';

const record = (commandType, payload, extra = {}) => ({
  commandId: 'cmd-1',
  commandType,
  payload: typeof payload === 'string' ? payload : JSON.stringify(payload),
  tenantId: 't1',
  aggregateId: 'a1',
  metadata: [],
  ...extra,
});

// A shelf of books, written with function-style decide/apply and a schema version 2 upcast.
const shelf = defineAggregate({
  init: () => ({ books: [] }),
  decide(state, command) {
    switch (command.type) {
      case 'add': {
        const title = field(command, 'title', 'string');
        if (title === '') throw invalid('title must not be empty');
        return [event('added', { title })];
      }
      case 'clear':
        if (state.books.length === 0) throw rejected('nothing to clear');
        return [event('cleared')];
      default:
        throw unknownCommand(command);
    }
  },
  apply(state, e) {
    switch (e.type) {
      case 'added':
        return { books: [...state.books, e.title] };
      case 'cleared':
        return { books: [] };
      default:
        throw unknownEvent(e);
    }
  },
  schemaVersion: { added: 2 },
  // v1 of `added` called the field `name`.
  upcast(type, version, payload) {
    if (type === 'added' && version === 1) {
      if (!('name' in payload)) throw new Error('missing name');
      const { name, ...rest } = payload;
      return { ...rest, title: name };
    }
    return payload;
  },
});

test('init serialises the initial state', () => {
  assert.equal(shelf.component.init(), '{"books":[]}');
});

test('decide maps the command record to an object and the events to records', () => {
  const c = shelf.component;
  assert.deepEqual(c.decide('{"books":[]}', record('add', { title: 'Dune' })), {
    tag: 'ok',
    val: [{ eventType: 'added', schemaVersion: 2, payload: '{"title":"Dune"}' }],
  });
  assert.deepEqual(c.decide('{"books":["Dune"]}', record('clear', {})), {
    tag: 'ok',
    val: [{ eventType: 'cleared', schemaVersion: 1, payload: '{}' }],
  });
});

test('rejected and invalid become the decide-error variant', () => {
  const c = shelf.component;
  assert.deepEqual(c.decide('{"books":[]}', record('clear', {})), {
    tag: 'err',
    val: { tag: 'rejected', val: 'nothing to clear' },
  });
  assert.deepEqual(c.decide('{"books":[]}', record('add', { title: '' })), {
    tag: 'err',
    val: { tag: 'invalid', val: 'title must not be empty' },
  });
  assert.deepEqual(c.decide('{"books":[]}', record('burn', {})), {
    tag: 'err',
    val: { tag: 'invalid', val: 'unknown command type `burn`' },
  });
});

test('payloads that are not JSON objects are invalid', () => {
  const c = shelf.component;
  for (const [payload, message] of [
    ['[]', 'payload of `add` command must be a JSON object'],
    ['"x"', 'payload of `add` command must be a JSON object'],
    ['null', 'payload of `add` command must be a JSON object'],
    ['{"title":', 'payload of `add` command is not JSON: EOF while parsing a value at line 1 column 10'],
  ]) {
    assert.deepEqual(c.decide('{"books":[]}', record('add', payload)), {
      tag: 'err',
      val: { tag: 'invalid', val: message },
    });
  }
});

test('the command type wins over a `type` field in the payload', () => {
  const seen = [];
  const agg = defineAggregate({
    init: () => ({}),
    decide: (state, command) => {
      seen.push({ ...command });
      return [];
    },
    apply: (s) => s,
  });
  agg.component.decide('{}', record('real', { type: 'fake', n: 1 }));
  assert.deepEqual(seen, [{ type: 'real', n: 1 }]);
});

test('any other exception in decide propagates (the component traps)', () => {
  const agg = defineAggregate({
    init: () => ({}),
    decide: () => {
      throw new TypeError('a bug');
    },
    apply: (s) => s,
  });
  assert.throws(() => agg.component.decide('{}', record('x', {})), { name: 'TypeError', message: 'a bug' });
  const returnsOne = defineAggregate({ init: () => ({}), decide: () => event('x'), apply: (s) => s });
  assert.throws(() => returnsOne.component.decide('{}', record('x', {})), /must return an array of events/);
  const asynchronous = defineAggregate({ init: () => ({}), decide: async () => [], apply: (s) => s });
  assert.throws(() => asynchronous.component.decide('{}', record('x', {})), /must be synchronous/);
  const untyped = defineAggregate({ init: () => ({}), decide: () => [{ amount: 1 }], apply: (s) => s });
  assert.throws(() => untyped.component.decide('{}', record('x', {})), /with a string type/);
  assert.throws(() => shelf.component.decide('not json', record('clear', {})), SyntaxError);
});

test('command context: non-enumerable properties and commandContext', () => {
  let seen;
  const agg = defineAggregate({
    init: () => ({}),
    decide: (state, command) => {
      seen = command;
      return [];
    },
    apply: (s) => s,
  });
  agg.component.decide(
    '{}',
    record('x', { n: 1, tenantId: 'from-payload' }, { metadata: [['correlation-id', 'c-9'], ['traceparent', 'tp']] }),
  );
  assert.deepEqual(Object.keys(seen), ['type', 'n', 'tenantId']);
  assert.equal(seen.commandId, 'cmd-1');
  assert.equal(seen.aggregateId, 'a1');
  assert.equal(seen.tenantId, 'from-payload'); // the payload's field wins
  assert.deepEqual(seen.metadata, { 'correlation-id': 'c-9', traceparent: 'tp' });
  assert.deepEqual(commandContext(seen), {
    commandId: 'cmd-1',
    tenantId: 't1',
    aggregateId: 'a1',
    metadata: { 'correlation-id': 'c-9', traceparent: 'tp' },
  });
  assert.throws(() => commandContext({ type: 'x' }), /not a command this SDK decoded/);
});

test('apply folds a batch, upcasting older schema versions', () => {
  const c = shelf.component;
  const r = c.apply('{"books":[]}', [
    { eventType: 'added', schemaVersion: 1, payload: '{"name":"Dune"}' },
    { eventType: 'added', schemaVersion: 2, payload: '{"title":"Emma"}' },
  ]);
  assert.deepEqual(r, { tag: 'ok', val: '{"books":["Dune","Emma"]}' });
  assert.deepEqual(c.apply('{"books":["x"]}', [{ eventType: 'cleared', schemaVersion: 1, payload: '{}' }]), {
    tag: 'ok',
    val: '{"books":[]}',
  });
  assert.deepEqual(c.apply('{"books":[]}', []), { tag: 'ok', val: '{"books":[]}' });
});

test('apply failures are error results that name the event', () => {
  const c = shelf.component;
  const err = (events, state = '{"books":[]}') => {
    const r = c.apply(state, events);
    assert.equal(r.tag, 'err', JSON.stringify(r));
    return r.val;
  };
  assert.equal(
    err([{ eventType: 'burnt', schemaVersion: 1, payload: '{}' }]),
    'cannot apply `burnt` event (schema version 1): unknown event type `burnt`',
  );
  assert.equal(
    err([{ eventType: 'added', schemaVersion: 1, payload: '{}' }]),
    'cannot upcast `added` event from schema version 1: missing name',
  );
  assert.equal(
    err([{ eventType: 'added', schemaVersion: 2, payload: '[1]' }]),
    'payload of `added` event (schema version 2) must be a JSON object',
  );
  assert.match(err([{ eventType: 'added', schemaVersion: 2, payload: '{' }]), /^payload of `added` event \(schema version 2\) is not JSON: /);
  assert.match(err([], '{'), /^state is not JSON: /);
});

test('object-style decide and apply: unknown types are refused with the known ones', () => {
  const agg = defineAggregate({
    init: () => ({ n: 0 }),
    decide: { inc: () => [event('incremented')] },
    apply: { incremented: (s) => ({ n: s.n + 1 }) },
  });
  const c = agg.component;
  assert.deepEqual(c.decide('{"n":0}', record('constructor', {})), {
    tag: 'err',
    val: { tag: 'invalid', val: 'unknown command type `constructor`, expected one of `inc`' },
  });
  assert.deepEqual(c.decide('{"n":0}', record('inc', {})).tag, 'ok');
  assert.equal(
    c.apply('{"n":0}', [{ eventType: 'toString', schemaVersion: 1, payload: '{}' }]).val,
    'cannot apply `toString` event (schema version 1): unknown event type `toString`, expected one of `incremented`',
  );
  const forgetful = defineAggregate({ init: () => ({}), decide: () => [], apply: { x: () => {} } });
  assert.equal(
    forgetful.component.apply('{}', [{ eventType: 'x', schemaVersion: 1, payload: '{}' }]).val,
    'apply of `x` event (schema version 1) returned undefined; return the new state',
  );
});

test('commands: fields are checked before decide, with messages naming the field', () => {
  const calls = [];
  const agg = defineAggregate({
    init: () => ({}),
    commands: { pay: { amount: 'integer', note: 'string?', tags: 'array?', meta: 'object?', rush: 'boolean?', rate: 'number?' } },
    decide: {
      pay(state, command) {
        calls.push({ ...command });
        return [];
      },
    },
    apply: (s) => s,
  });
  const c = agg.component;
  const invalidOf = (payload) => {
    const r = c.decide('{}', record('pay', payload));
    assert.equal(r.tag, 'err', JSON.stringify(payload));
    assert.equal(r.val.tag, 'invalid');
    return r.val.val;
  };
  const prefix = 'invalid `pay` command: ';
  assert.equal(invalidOf({}), `${prefix}missing field \`amount\``);
  assert.equal(invalidOf({ amount: null }), `${prefix}invalid type for field \`amount\`: expected integer, got null`);
  assert.equal(invalidOf({ amount: 'ten' }), `${prefix}invalid type for field \`amount\`: expected integer, got string "ten"`);
  assert.equal(invalidOf({ amount: 1.5 }), `${prefix}invalid type for field \`amount\`: expected integer, got floating point 1.5`);
  assert.equal(invalidOf('{"amount": 2.0}'), `${prefix}invalid type for field \`amount\`: expected integer, got floating point 2.0`);
  assert.equal(invalidOf({ amount: [] }), `${prefix}invalid type for field \`amount\`: expected integer, got an array`);
  assert.equal(invalidOf({ amount: {} }), `${prefix}invalid type for field \`amount\`: expected integer, got an object`);
  assert.equal(
    invalidOf('{"amount": -9007199254740993}'),
    `${prefix}invalid value for field \`amount\`: integer -9007199254740993 is out of range (JavaScript integers are exact up to ±9007199254740991)`,
  );
  assert.equal(invalidOf({ amount: 1, note: 5 }), `${prefix}invalid type for field \`note\`: expected string, got integer 5`);
  assert.equal(invalidOf({ amount: 1, tags: 'a' }), `${prefix}invalid type for field \`tags\`: expected array, got string "a"`);
  assert.equal(invalidOf({ amount: 1, meta: [] }), `${prefix}invalid type for field \`meta\`: expected object, got an array`);
  assert.equal(invalidOf({ amount: 1, rush: 1 }), `${prefix}invalid type for field \`rush\`: expected boolean, got integer 1`);
  assert.equal(invalidOf({ amount: 1, rate: '1' }), `${prefix}invalid type for field \`rate\`: expected number, got string "1"`);
  assert.equal(
    invalidOf({ amount: 'x'.repeat(100) }),
    `${prefix}invalid type for field \`amount\`: expected integer, got string "${'x'.repeat(36)}..."`,
  );
  assert.deepEqual(calls, [], 'decide never ran');
  const ok = c.decide('{}', record('pay', '{"amount": -0, "note": null, "rate": 1.5, "rush": true}'));
  assert.equal(ok.tag, 'ok');
  assert.equal(calls.length, 1);
  assert.deepEqual(calls[0], { type: 'pay', amount: -0, note: null, rate: 1.5, rush: true });
});

test('field() works on its own and normalises -0', () => {
  const cmd = { type: 'deposit', amount: -0, name: 'x' };
  assert.ok(Object.is(field(cmd, 'amount', 'integer'), 0));
  assert.equal(field(cmd, 'name', 'any'), 'x');
  assert.equal(field(cmd, 'missing', 'string?'), undefined);
  assert.throws(() => field(cmd, 'missing', 'any'), { message: 'invalid `deposit` command: missing field `missing`' });
  assert.throws(() => field({ n: 'x' }, 'n', 'integer'), { message: 'invalid type for field `n`: expected integer, got string "x"' });
  assert.throws(() => field(cmd, 'amount', 'int'), TypeError);
  // Inherited properties are not fields.
  assert.throws(() => field({}, 'toString', 'any'), /missing field `toString`/);
});

test('errors and events', () => {
  const r = rejected('no');
  assert.ok(r instanceof DecideError && r instanceof Error);
  assert.equal(r.kind, 'rejected');
  assert.equal(r.message, 'no');
  assert.equal(invalid('bad').kind, 'invalid');
  assert.ok(DecideError.is(r));
  assert.ok(!DecideError.is(new Error('no')));
  assert.ok(!DecideError.is('rejected'));
  assert.throws(() => new DecideError('denied', 'x'), TypeError);
  assert.deepEqual(event('opened', { owner: 'a' }), { type: 'opened', owner: 'a' });
  assert.deepEqual(Object.keys(event('x', { b: 1, a: 2 })), ['type', 'b', 'a']);
  assert.throws(() => event('x', { type: 'y' }), /must not have a `type` field/);
  assert.throws(() => event(''), /non-empty string/);
  assert.throws(() => event('x', [1]), /must be an object/);
});

test('schema versions: a number, per type, or a function; out of range is a bug', () => {
  const make = (schemaVersion) =>
    defineAggregate({ init: () => ({}), decide: () => [event('a'), event('b')], apply: (s) => s, schemaVersion });
  const versions = (agg) => agg.component.decide('{}', record('x', {})).val.map((e) => e.schemaVersion);
  assert.deepEqual(versions(make(undefined)), [1, 1]);
  assert.deepEqual(versions(make(3)), [3, 3]);
  assert.deepEqual(versions(make({ b: 7 })), [1, 7]);
  assert.deepEqual(versions(make((e) => (e.type === 'a' ? 4 : 5))), [4, 5]);
  assert.throws(() => versions(make(0)), /schema version of `a` event must be an integer from 1/);
  assert.throws(() => versions(make(2 ** 32)), /schema version/);
});

test('defineAggregate checks its spec', () => {
  const ok = { init: () => ({}), decide: () => [], apply: (s) => s };
  assert.throws(() => defineAggregate(), TypeError);
  assert.throws(() => defineAggregate({ ...ok, init: {} }), /`init` must be a function/);
  assert.throws(() => defineAggregate({ ...ok, decide: { a: 1 } }), /`decide` must be a function or an object/);
  assert.throws(() => defineAggregate({ ...ok, apply: undefined }), /`apply` must be/);
  assert.throws(() => defineAggregate({ ...ok, upcast: 1 }), /`upcast` must be a function/);
  assert.throws(() => defineAggregate({ ...ok, schemaVersion: '1' }), /`schemaVersion` must be/);
  assert.throws(() => defineAggregate({ ...ok, commands: { a: { n: 'int' } } }), /field kind must be one of/);
  assert.throws(
    () => defineAggregate({ ...ok, decide: { a: () => [] }, commands: { a: {}, b: {} } }),
    /command `b` has no decide.b/,
  );
  const agg = defineAggregate({ ...ok, commands: { a: {}, b: { n: 'integer' } } });
  assert.deepEqual(agg.commandTypes, ['a', 'b']);
  assert.ok(Object.isFrozen(agg) && Object.isFrozen(agg.component));
  const badInit = defineAggregate({ ...ok, init: () => undefined });
  assert.throws(() => badInit.component.init(), /JSON-serialisable/);
});
