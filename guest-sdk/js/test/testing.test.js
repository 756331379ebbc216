import { test } from 'node:test';
import assert from 'node:assert/strict';
import { AssertionError } from 'node:assert';
import { spawnSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { given, rawEvent } from '../testing.js';
import { defineAggregate, event, rejected, invalid, commandContext } from '../aggregate.js';

// A lamp: switch on/off; counts switches; schema version 2 for `switched_on` (v1 said `at`).
const lamp = defineAggregate({
  init: () => ({ on: false, switches: 0 }),
  commands: { switch: { on: 'boolean' } },
  decide: {
    switch(state, { on }) {
      if (state.on === on) throw rejected(`lamp is already ${on ? 'on' : 'off'}`);
      return [on ? event('switched_on', { room: 'hall' }) : event('switched_off')];
    },
  },
  apply: {
    switched_on: (s) => ({ on: true, switches: s.switches + 1 }),
    switched_off: (s) => ({ on: false, switches: s.switches + 1 }),
  },
  schemaVersion: { switched_on: 2 },
  upcast: (type, version, payload) => (type === 'switched_on' && version === 1 ? { room: payload.at } : payload),
});

const failure = (f) => {
  try {
    f();
  } catch (e) {
    assert.ok(e instanceof AssertionError, `expected an AssertionError, got ${e}`);
    return e.message;
  }
  assert.fail('expected the assertion to fail');
};

test('passing scenarios', () => {
  given(lamp)
    .when('switch', { on: true })
    .then([{ type: 'switched_on', room: 'hall' }])
    .thenState({ on: true, switches: 1 });
  given(lamp, [{ type: 'switched_on', room: 'hall' }])
    .when('switch', { on: true })
    .thenRejected('already on')
    .thenRejected(/^lamp is already on$/)
    .thenError(rejected('lamp is already on'));
  given(lamp, [event('switched_on', { room: 'x' }), event('switched_off')])
    .when('switch', '{"on": true}')
    .then([event('switched_on', { room: 'hall' })])
    .thenState({ switches: 3, on: true }); // key order does not matter
  given(lamp).when('switch', { on: 'yes' }).thenInvalid('expected boolean');
  given(lamp).when('switch', '[]').thenError(invalid('payload of `switch` command must be a JSON object'));
});

test('given: state, raw history with upcasting, and accessors', () => {
  assert.deepEqual(given(lamp, [rawEvent('switched_on', 1, { at: 'attic' })]).state, { on: true, switches: 1 });
  assert.throws(() => given(lamp, [rawEvent('switched_on', 2, '{')]), /given: the history does not apply: payload of `switched_on`/);
  const then = given(lamp).when('switch', { on: true });
  assert.deepEqual(then.records, [{ eventType: 'switched_on', schemaVersion: 2, payload: '{"room":"hall"}' }]);
  assert.deepEqual(then.events, [{ type: 'switched_on', room: 'hall' }]);
  assert.equal(then.error, null);
  assert.deepEqual(then.stateAfter, { on: true, switches: 1 });
  const refused = given(lamp).when('switch', { on: false });
  assert.deepEqual(refused.error, { kind: 'rejected', message: 'lamp is already off' });
  assert.equal(refused.records, null);
  assert.equal(refused.stateAfter, null);
  assert.throws(() => given({}), /result of defineAggregate/);
});

test('when passes the command context through', () => {
  let context;
  const probe = defineAggregate({
    init: () => ({}),
    decide: (s, c) => {
      context = commandContext(c);
      return [];
    },
    apply: (s) => s,
  });
  given(probe).when('x', {}, { tenantId: 't', aggregateId: 'a', commandId: 'c', metadata: { k: 'v' } }).then([]);
  assert.deepEqual(context, { commandId: 'c', tenantId: 't', aggregateId: 'a', metadata: { k: 'v' } });
  given(probe).when('x', {}, { metadata: [['a', 'b']] });
  assert.deepEqual(context.metadata, { a: 'b' });
  assert.equal(context.commandId, 'test-command');
});

test('mismatched events report the first difference', () => {
  const on = given(lamp).when('switch', { on: true });
  let msg = failure(() => on.then([{ type: 'switched_off' }]));
  assert.match(msg, /^when `switch` \{"on":true\}: events differ/);
  assert.ok(msg.includes('first difference at [0]: expected switched_off v1 {}, got switched_on v2 {"room":"hall"}'), msg);
  msg = failure(() => on.then([{ type: 'switched_on', room: 'hall' }, { type: 'switched_off' }]));
  assert.ok(msg.includes('missing event [1]: switched_off v1 {}'), msg);
  msg = failure(() => on.then([]));
  assert.ok(msg.includes('unexpected event [0]: switched_on v2 {"room":"hall"}'), msg);
  msg = failure(() => on.then([rawEvent('switched_on', 1, { room: 'hall' })]));
  assert.ok(msg.includes('expected switched_on v1'), msg);
  msg = failure(() => on.then([{ type: 'switched_on', room: 'attic' }]));
  assert.ok(msg.includes('first difference at [0]'), msg);
});

test('the wrong kind of outcome is reported', () => {
  const off = given(lamp).when('switch', { on: false });
  const on = given(lamp).when('switch', { on: true });
  assert.match(failure(() => off.then([{ type: 'switched_off' }])), /but decide failed with rejected\("lamp is already off"\)/);
  assert.match(failure(() => on.thenRejected('already')), /expected rejected error containing "already"\n {2}but decide succeeded with 1 event\(s\)/);
  assert.match(failure(() => off.thenInvalid('already')), /expected invalid error containing "already"\n {2}but got error rejected\("lamp is already off"\)/);
  assert.match(failure(() => off.thenRejected('nope')), /but got error rejected/);
  assert.match(failure(() => off.thenRejected(/^already/)), /matching \/\^already\//);
  assert.match(failure(() => off.thenError(rejected('other'))), /expected error rejected\("other"\)\n {2}but got error rejected\("lamp is already off"\)/);
  assert.match(failure(() => off.thenError(invalid('lamp is already off'))), /but got error rejected/);
  assert.match(failure(() => on.thenError(rejected('x'))), /but decide succeeded/);
  assert.match(failure(() => on.thenState({ on: false, switches: 1 })), /states differ\n {2}expected \{"on":false,"switches":1\}\n {2}actual {3}\{"on":true,"switches":1\}/);
  assert.match(failure(() => off.thenState({})), /expected a new state but decide failed/);
});

test('a bug in decide surfaces as the exception itself', () => {
  const buggy = defineAggregate({
    init: () => ({}),
    decide: (s, c) => c.missing.field,
    apply: (s) => s,
  });
  assert.throws(() => given(buggy).when('x'), TypeError);
});

test('testing.js lets Node.js resolve @aggregate-host/sdk outside the SDK package', () => {
  const testing = new URL('../testing.js', import.meta.url).href;
  const script = `await import(${JSON.stringify(testing)});
const sdk = await import('@aggregate-host/sdk');
const t = await import('@aggregate-host/sdk/testing');
console.log(typeof sdk.defineAggregate, typeof t.given, import.meta.resolve('@aggregate-host/sdk'));`;
  const run = (code) => spawnSync(process.execPath, ['--input-type=module', '-e', code], { cwd: tmpdir(), encoding: 'utf8' });
  const r = run(script);
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout.trim(), `function function ${new URL('../aggregate.js', import.meta.url).href}`);
  // Without testing.js, the name does not resolve there.
  const bare = run("await import('@aggregate-host/sdk')");
  assert.notEqual(bare.status, 0);
  assert.match(bare.stderr, /ERR_MODULE_NOT_FOUND/);
});
