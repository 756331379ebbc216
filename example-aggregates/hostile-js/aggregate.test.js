// The hostile guest's well-behaved commands, natively (node --test). `spin` and `hog` are only
// exercised through the host, where fuel, deadlines and memory limits stop them.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { given } from '../../guest-sdk/js/testing.js';

const { default: hostile } = await import('./aggregate.js');

test('ok produces done and leaves the state alone', () => {
  given(hostile).when('ok').then([{ type: 'done' }]).thenState({});
});

test('echo returns a string of exactly the requested size', () => {
  for (const size of [0, 1, 1000, 1 << 20]) {
    const then = given(hostile).when('echo', { size });
    const [record] = then.records;
    assert.equal(record.eventType, 'echoed');
    assert.equal(JSON.parse(record.payload).data.length, size);
    assert.equal(then.events[0].data, 'x'.repeat(size));
  }
  given(hostile).when('echo', { size: -1 }).thenInvalid('size must not be negative');
  given(hostile).when('echo', {}).thenInvalid('missing field `size`');
});

test('throw is a bug, not a refusal: decide throws instead of answering', () => {
  assert.throws(() => given(hostile).when('throw'), { message: 'hostile guest throws on purpose' });
});

test('unknown commands and events are refused by name', () => {
  given(hostile).when('explode').thenInvalid('unknown command type `explode`');
  const c = hostile.component;
  const r = c.apply(c.init(), [{ eventType: 'corrupt', schemaVersion: 1, payload: '{}' }]);
  assert.equal(r.tag, 'err');
  assert.match(r.val, /`corrupt`/);
});
