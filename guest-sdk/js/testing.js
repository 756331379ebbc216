// Given / when / then tests of an aggregate for `node --test`, without WebAssembly.
//
//   import { test } from 'node:test';
//   import { given } from '<path to guest-sdk/js>/testing.js';
//   const { default: account } = await import('./aggregate.js'); // after testing.js, see below
//
//   test('deposit', () => {
//     given(account, [{ type: 'opened', owner: 'ann' }])
//       .when('deposit', { amount: 5 })
//       .then([{ type: 'deposited', amount: 5 }])
//       .thenState({ opened: true, owner: 'ann', balance: 5 });
//   });
//
// Every scenario runs through `aggregate.component`, the very functions the component exports:
// the history is encoded to WIT event records and folded with `apply`, the command is handed to
// `decide` as a WIT command record with a JSON payload, and the produced events are applied the
// same way. So the tests cover the JSON mapping (field checks, schema versions, upcasting) too.
//
// Importing this module registers Node.js resolve hooks so that `@aggregate-host/sdk` resolves
// to this SDK without an npm install; they apply to modules loaded afterwards, hence the dynamic
// `import()` of the aggregate.

import { register } from 'node:module';
import { AssertionError } from 'node:assert';
import { isDeepStrictEqual } from 'node:util';

register('./resolve-hooks.js', import.meta.url);

/** A stored event given by its wire form, e.g. an older schema version for an upcast test. */
export class RawEvent {
  constructor(eventType, schemaVersion, payload) {
    this.eventType = eventType;
    this.schemaVersion = schemaVersion;
    this.payload = typeof payload === 'string' ? payload : JSON.stringify(payload);
  }
}

/** `rawEvent('deposited', 1, { cents: 250 })`: a history entry in wire form. */
export function rawEvent(eventType, schemaVersion, payload = {}) {
  return new RawEvent(eventType, schemaVersion, payload);
}

/** Starts a scenario: `aggregate` (a `defineAggregate` result) after the events `history`. */
export function given(aggregate, history = []) {
  if (!aggregate?.component || typeof aggregate.encodeEvent !== 'function') {
    throw new TypeError('given: the first argument must be the result of defineAggregate(...)');
  }
  if (!Array.isArray(history)) throw new TypeError('given: the history must be an array of events');
  return new Given(aggregate, history);
}

class Given {
  constructor(aggregate, history) {
    this.aggregate = aggregate;
    const c = aggregate.component;
    const records = history.map((e) => (e instanceof RawEvent ? e : aggregate.encodeEvent(e)));
    const result = c.apply(c.init(), records);
    if (result.tag !== 'ok') throw new Error(`given: the history does not apply: ${result.val}`);
    this.stateText = result.val;
  }

  /** The state after the history, as an object. */
  get state() {
    return JSON.parse(this.stateText);
  }

  /**
   * Runs command `type` with `payload` (an object, or JSON text for malformed input such as
   * `'[]'`). `context` may set `commandId`, `tenantId`, `aggregateId` and `metadata` (an object
   * or a list of [key, value] pairs).
   */
  when(type, payload = {}, context = {}) {
    const text = typeof payload === 'string' ? payload : JSON.stringify(payload);
    const metadata = Array.isArray(context.metadata)
      ? context.metadata
      : Object.entries(context.metadata ?? {});
    const record = {
      commandId: context.commandId ?? 'test-command',
      commandType: type,
      payload: text,
      tenantId: context.tenantId ?? '',
      aggregateId: context.aggregateId ?? 'test-aggregate',
      metadata,
    };
    const c = this.aggregate.component;
    const outcome = c.decide(this.stateText, record);
    let stateAfter = null;
    if (outcome.tag === 'ok') {
      const applied = c.apply(this.stateText, outcome.val);
      if (applied.tag !== 'ok') {
        throw new Error(`when \`${type}\` ${text}: the produced events do not apply: ${applied.val}`);
      }
      stateAfter = applied.val;
    }
    return new Then(this.aggregate, `\`${type}\` ${text}`, outcome, stateAfter);
  }
}

class Then {
  constructor(aggregate, label, outcome, stateAfter) {
    this.aggregate = aggregate;
    this.label = label;
    this.outcome = outcome;
    this.stateText = stateAfter;
  }

  /** The produced events in wire form `{ eventType, schemaVersion, payload }`, or null. */
  get records() {
    return this.outcome.tag === 'ok' ? this.outcome.val : null;
  }

  /** The produced events as `{ type, ...payload }`, or null. */
  get events() {
    return this.records?.map((r) => ({ type: r.eventType, ...JSON.parse(r.payload) })) ?? null;
  }

  /** `{ kind, message }` when decide refused the command, else null. */
  get error() {
    return this.outcome.tag === 'err' ? { kind: this.outcome.val.tag, message: this.outcome.val.val } : null;
  }

  /** The state after the produced events, or null when decide refused the command. */
  get stateAfter() {
    return this.stateText === null ? null : JSON.parse(this.stateText);
  }

  /** Asserts the command produced exactly `expected` (type, schema version, payload as JSON). */
  then(expected) {
    if (!Array.isArray(expected)) throw new TypeError('then: expected an array of events');
    const want = expected.map((e) => (e instanceof RawEvent ? e : this.aggregate.encodeEvent(e)));
    if (this.outcome.tag !== 'ok') {
      this.fail(`expected ${list(want)}\n  but decide failed with ${showError(this.outcome.val)}`);
    }
    const diff = diffEvents(want, this.outcome.val);
    if (diff) {
      this.fail(`events differ\n  expected ${list(want)}\n  actual   ${list(this.outcome.val)}\n  ${diff}`);
    }
    return this;
  }

  /** Asserts a `rejected` error whose message contains `needle` (a string) or matches it (a RegExp). */
  thenRejected(needle) {
    return this.expectError('rejected', needle);
  }

  /** Asserts an `invalid` error whose message contains `needle` (a string) or matches it (a RegExp). */
  thenInvalid(needle) {
    return this.expectError('invalid', needle);
  }

  /** Asserts exactly this error: `thenError(rejected('account is not open'))`. */
  thenError(expected) {
    const want = { tag: expected?.kind, val: expected?.message };
    if (this.outcome.tag !== 'err') {
      this.fail(`expected error ${showError(want)}\n  but decide succeeded with ${list(this.outcome.val)}`);
    }
    if (this.outcome.val.tag !== want.tag || this.outcome.val.val !== want.val) {
      this.fail(`expected error ${showError(want)}\n  but got error ${showError(this.outcome.val)}`);
    }
    return this;
  }

  /** Asserts the state after applying the produced events (compared as JSON values). */
  thenState(expected) {
    if (this.stateText === null) {
      this.fail(`expected a new state but decide failed with ${showError(this.outcome.val)}`);
    }
    const actual = JSON.parse(this.stateText);
    const want = JSON.parse(JSON.stringify(expected));
    if (!isDeepStrictEqual(actual, want)) {
      this.fail(`states differ\n  expected ${JSON.stringify(want)}\n  actual   ${this.stateText}`, actual, want);
    }
    return this;
  }

  expectError(kind, needle) {
    const what = `${kind} error ${needle instanceof RegExp ? `matching ${needle}` : `containing ${JSON.stringify(needle)}`}`;
    if (this.outcome.tag !== 'err') {
      this.fail(`expected ${what}\n  but decide succeeded with ${list(this.outcome.val)}`);
    }
    const { tag, val } = this.outcome.val;
    const matches = needle instanceof RegExp ? needle.test(val) : val.includes(String(needle));
    if (tag !== kind || !matches) this.fail(`expected ${what}\n  but got error ${showError(this.outcome.val)}`);
    return this;
  }

  fail(message, actual, expected) {
    throw new AssertionError({ message: `when ${this.label}: ${message}`, actual, expected });
  }
}

function showError(e) {
  return `${e.tag}(${JSON.stringify(e.val)})`;
}

function show(r) {
  return `${r.eventType} v${r.schemaVersion} ${r.payload}`;
}

function list(records) {
  if (records.length === 0) return 'no events';
  return `${records.length} event(s):${records.map((r, i) => `\n    [${i}] ${show(r)}`).join('')}`;
}

function payloadValue(r) {
  try {
    return JSON.parse(r.payload);
  } catch {
    return r.payload;
  }
}

function diffEvents(expected, actual) {
  const n = Math.max(expected.length, actual.length);
  for (let i = 0; i < n; i++) {
    const e = expected[i];
    const a = actual[i];
    if (e && !a) return `missing event [${i}]: ${show(e)}`;
    if (a && !e) return `unexpected event [${i}]: ${show(a)}`;
    if (
      e.eventType !== a.eventType ||
      e.schemaVersion !== a.schemaVersion ||
      !isDeepStrictEqual(payloadValue(e), payloadValue(a))
    ) {
      return `first difference at [${i}]: expected ${show(e)}, got ${show(a)}`;
    }
  }
  return null;
}
