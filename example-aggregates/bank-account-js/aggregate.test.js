// Given / when / then tests of the JavaScript bank account (node --test; no WebAssembly).
// The same rules and messages as the Rust reference's tests.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { given, rawEvent } from '../../guest-sdk/js/testing.js';
import { invalid, rejected } from '../../guest-sdk/js/aggregate.js';

// After testing.js: it teaches Node.js to resolve '@aggregate-host/sdk'.
const { default: account, MAX_BALANCE, addToBalance } = await import('./aggregate.js');

const opened = { type: 'opened', owner: 'alice' };
const deposited = (amount) => ({ type: 'deposited', amount });
const withdrawn = (amount) => ({ type: 'withdrawn', amount });

test('the initial state and its JSON', () => {
  assert.equal(account.component.init(), '{"opened":false,"owner":"","balance":0}');
  assert.deepEqual(given(account).state, { opened: false, owner: '', balance: 0 });
});

test('open a new account', () => {
  given(account)
    .when('open', { owner: 'alice' })
    .then([opened])
    .thenState({ opened: true, owner: 'alice', balance: 0 });
});

test('opening twice is rejected with the owner', () => {
  given(account, [opened])
    .when('open', { owner: 'bob' })
    .thenError(rejected('account is already open (owner alice)'));
});

test('the owner must not be empty or blank', () => {
  for (const owner of ['', ' ', '\t\n', '\u3000', '\u0085']) {
    given(account).when('open', { owner }).thenError(invalid('owner must not be empty'));
  }
  // U+FEFF is not White_Space for Rust's trim, so it is a (strange) name, as in Rust.
  given(account).when('open', { owner: '\ufeff' }).then([{ type: 'opened', owner: '\ufeff' }]);
  given(account)
    .when('open', { owner: 'Zoë 🦀' })
    .then([{ type: 'opened', owner: 'Zoë 🦀' }])
    .thenState({ opened: true, owner: 'Zoë 🦀', balance: 0 });
});

test('deposit increases the balance', () => {
  given(account, [opened, deposited(50)])
    .when('deposit', { amount: 25 })
    .then([deposited(25)])
    .thenState({ opened: true, owner: 'alice', balance: 75 });
});

test('an account that is not open refuses money', () => {
  given(account).when('deposit', { amount: 10 }).thenError(rejected('account is not open'));
  given(account).when('withdraw', { amount: 10 }).thenError(rejected('account is not open'));
});

test('amounts must be positive, checked before the account is open', () => {
  for (const amount of [0, -5]) {
    const message = `amount must be positive, got ${amount}`;
    given(account).when('deposit', { amount }).thenError(invalid(message));
    given(account).when('withdraw', { amount }).thenError(invalid(message));
    given(account, [opened]).when('deposit', { amount }).thenError(invalid(message));
    given(account, [opened, deposited(100)]).when('withdraw', { amount }).thenError(invalid(message));
  }
  // -0 is the integer 0, as in Rust.
  given(account, [opened]).when('deposit', '{"amount": -0}').thenError(invalid('amount must be positive, got 0'));
});

test('withdraw within the balance', () => {
  given(account, [opened, deposited(100)])
    .when('withdraw', { amount: 100 })
    .then([withdrawn(100)])
    .thenState({ opened: true, owner: 'alice', balance: 0 });
});

test('withdraw beyond the balance is rejected', () => {
  given(account, [opened, deposited(100), withdrawn(30)])
    .when('withdraw', { amount: 71 })
    .thenRejected('insufficient funds')
    .thenError(rejected('insufficient funds: balance 70, requested 71'));
  given(account, [opened, deposited(100), withdrawn(30)])
    .when('withdraw', { amount: 70 })
    .then([withdrawn(70)])
    .thenState({ opened: true, owner: 'alice', balance: 0 });
  given(account, [opened])
    .when('withdraw', { amount: 1 })
    .thenError(rejected('insufficient funds: balance 0, requested 1'));
});

test('large amounts stay exact', () => {
  given(account, [opened, deposited(4_000_000_000_000)])
    .when('deposit', { amount: 1 })
    .then([deposited(1)])
    .thenState({ opened: true, owner: 'alice', balance: 4_000_000_000_001 });
});

test('extra payload fields are ignored', () => {
  given(account)
    .when('open', { owner: 'Ada', note: 'vip' })
    .then([{ type: 'opened', owner: 'Ada' }]);
  given(account, [opened])
    .when('deposit', { amount: 5, currency: 'EUR' })
    .then([deposited(5)]);
});

test('malformed commands are invalid and name the field', () => {
  const g = given(account, [opened]);
  g.when('deposit', {}).thenError(invalid('invalid `deposit` command: missing field `amount`'));
  g.when('deposit', { amount: 'ten' }).thenInvalid('invalid type for field `amount`: expected integer, got string "ten"');
  g.when('deposit', { amount: 1.5 }).thenInvalid('field `amount`: expected integer, got floating point 1.5');
  g.when('deposit', '{"amount": 100.0}').thenInvalid('field `amount`: expected integer, got floating point 100.0');
  g.when('deposit', '{"amount": 1e2}').thenInvalid('field `amount`: expected integer, got floating point 1e2');
  g.when('deposit', { amount: true }).thenInvalid('field `amount`: expected integer, got boolean true');
  g.when('withdraw', { amount: null }).thenInvalid('field `amount`: expected integer, got null');
  g.when('deposit', '{"amount": 9007199254740993}').thenInvalid('`amount`: integer 9007199254740993 is out of range');
  g.when('open', { owner: 7 }).thenInvalid('invalid type for field `owner`: expected string, got integer 7');
  g.when('open', {}).thenError(invalid('invalid `open` command: missing field `owner`'));
  g.when('deposit', '[]').thenError(invalid('payload of `deposit` command must be a JSON object'));
  g.when('deposit', '{"amount": 1').thenInvalid('payload of `deposit` command is not JSON');
  g.when('close', {}).thenError(
    invalid('unknown command type `close`, expected one of `open`, `deposit`, `withdraw`'),
  );
  // Nothing happened.
  assert.deepEqual(g.state, { opened: true, owner: 'alice', balance: 0 });
});

test('events are schema version 1 without a type field in the payload', () => {
  const then = given(account, [opened]).when('deposit', { amount: 7 });
  assert.deepEqual(then.records, [{ eventType: 'deposited', schemaVersion: 1, payload: '{"amount":7}' }]);
});

test('apply folds a batch and refuses an unknown event type by name', () => {
  const c = account.component;
  const batch = [
    { eventType: 'opened', schemaVersion: 1, payload: '{"owner":"Ada"}' },
    { eventType: 'deposited', schemaVersion: 1, payload: '{"amount":100}' },
    { eventType: 'withdrawn', schemaVersion: 1, payload: '{"amount":30}' },
  ];
  const folded = c.apply(c.init(), batch);
  assert.equal(folded.tag, 'ok');
  assert.deepEqual(JSON.parse(folded.val), { opened: true, owner: 'Ada', balance: 70 });
  const unknown = c.apply(c.init(), [{ eventType: 'closed', schemaVersion: 1, payload: '{}' }]);
  assert.equal(unknown.tag, 'err');
  assert.match(unknown.val, /unknown event type `closed`/);
  assert.throws(() => given(account, [rawEvent('closed', 1, {})]), /`closed`/);
});

test('the maximum balance is 2^53 - 1, the limit every language shares', () => {
  assert.equal(MAX_BALANCE, 9007199254740991);
  assert.equal(MAX_BALANCE, 2 ** 53 - 1);
});

test('deposits fill the balance up to the maximum', () => {
  given(account, [opened, deposited(MAX_BALANCE - 1)])
    .when('deposit', { amount: 1 })
    .then([deposited(1)])
    .thenState({ opened: true, owner: 'alice', balance: MAX_BALANCE });
  given(account, [opened])
    .when('deposit', '{"amount": 9007199254740991}')
    .then([deposited(9007199254740991)])
    .thenState({ opened: true, owner: 'alice', balance: 9007199254740991 });
});

test('a deposit that would overflow the balance is rejected', () => {
  given(account, [opened, deposited(MAX_BALANCE)])
    .when('deposit', { amount: 1 })
    .thenError(rejected('balance would overflow: balance 9007199254740991, requested 1, maximum 9007199254740991'));
  // A sum past 2^53 that no double holds exactly (9007199254740981 + 4503599627370498 is odd).
  given(account, [opened, deposited(MAX_BALANCE - 5), withdrawn(5)])
    .when('deposit', '{"amount": 4503599627370498}')
    .thenError(
      rejected('balance would overflow: balance 9007199254740981, requested 4503599627370498, maximum 9007199254740991'),
    );
  given(account, [opened, deposited(MAX_BALANCE), withdrawn(1)])
    .when('deposit', { amount: 1 })
    .then([deposited(1)])
    .thenState({ opened: true, owner: 'alice', balance: MAX_BALANCE });
});

test('amounts beyond the maximum are invalid, as the SDK refuses them', () => {
  // The story of the bug (in Rust): 2^63 - 1 and then 1 wrapped the balance.
  for (const amount of ['9007199254740992', '9223372036854775807']) {
    for (const type of ['deposit', 'withdraw']) {
      given(account, [opened, deposited(100)])
        .when(type, `{"amount": ${amount}}`)
        .thenInvalid(`field \`amount\`: integer ${amount} is out of range`);
    }
  }
});

test('balance arithmetic is checked, never rounded', () => {
  assert.equal(addToBalance(MAX_BALANCE - 1, 1), MAX_BALANCE);
  assert.equal(addToBalance(MAX_BALANCE, 1), null);
  assert.equal(addToBalance(MAX_BALANCE, 2), null); // 2^53 + 1 rounds to 2^53
  assert.equal(addToBalance(MAX_BALANCE, MAX_BALANCE), null);
  assert.equal(addToBalance(0, -MAX_BALANCE), -MAX_BALANCE);
  assert.equal(addToBalance(-MAX_BALANCE, -1), null);
  assert.equal(addToBalance(2 ** 60, -(2 ** 60)), null); // not exact operands: refused
  assert.equal(addToBalance(1, 0.5), null);
});

test('apply refuses a history that would overflow, naming the event', () => {
  const c = account.component;
  const raw = (type, amount) => ({ eventType: type, schemaVersion: 1, payload: `{"amount":${amount}}` });
  for (const [history, message] of [
    [[raw('deposited', MAX_BALANCE), raw('deposited', 1)], 'balance 9007199254740991, deposited 1'],
    [[raw('deposited', 1), raw('deposited', '9223372036854775807')], 'balance 1, deposited 9223372036854776000'],
    [[raw('withdrawn', MAX_BALANCE), raw('withdrawn', 1)], 'balance -9007199254740991, withdrawn 1'],
  ]) {
    const folded = c.apply(c.init(), history);
    assert.equal(folded.tag, 'err', JSON.stringify(folded));
    assert.ok(folded.val.endsWith(`: balance would overflow: ${message}`), folded.val);
  }
  assert.throws(() => given(account, [opened, deposited(MAX_BALANCE), deposited(1)]), /balance would overflow/);
});
