// Write an Aggregate Host aggregate in JavaScript over plain objects.
//
//   import { defineAggregate, event, rejected } from '@aggregate-host/sdk';
//
//   export default defineAggregate({
//     init: () => ({ value: 0 }),
//     commands: { add: { amount: 'integer' } },          // checked before decide
//     decide: {
//       add(state, { amount }) {
//         if (amount <= 0) throw rejected('amount must be positive');
//         return [event('added', { amount })];
//       },
//     },
//     apply: { added: (state, { amount }) => ({ value: state.value + amount }) },
//   });
//
// `build.mjs` turns the module into a component: `defineAggregate(...).component` holds the three
// functions of the WIT world `aggregate:core/aggregate` (`init`, `decide`, `apply`, over JSON text
// and WIT records), and build.mjs exports exactly those. The mapping is the Rust SDK's:
//
// - state: `init()` returns it; it crosses the boundary as JSON (`JSON.stringify`/`JSON.parse`).
// - command: `{ type: command-type, ...payload }`, the payload being a JSON object (anything else
//   is `invalid`). `commandId`, `tenantId`, `aggregateId` and `metadata` (an object) are
//   inherited read-only accessors of it (a payload field of the same name shadows them); they
//   are always available through `commandContext(command)`.
// - events: `{ type, ...payload }`; the `type` becomes the WIT `event-type`, the other fields the
//   JSON payload, `schemaVersion` (default 1) the `schema-version`. `apply` gets the same shape
//   back, after `upcast` had the chance to rewrite an older payload.
// - `throw rejected(msg)` → `decide-error::rejected(msg)`; `throw invalid(msg)` → `invalid(msg)`.
//   Any other exception in `decide` is a bug and traps (the host sees a trap, like a Rust panic).
//   An exception in `apply` becomes apply's error result, naming the event.

import { parseJson, numberNote, copyNotes } from './json.js';

const BRAND = Symbol.for('aggregate-host.decide-error');
// The WIT command record of each decoded command, for its context accessors.
const records = new WeakMap();

function contextOf(command) {
  const record = records.get(command);
  if (!record) throw new TypeError('commandContext: not a command this SDK decoded');
  return record;
}

// The prototype of decoded commands: the context as read-only accessors, so they stay out of
// Object.keys, spreads and JSON, and a payload field of the same name simply shadows them.
const COMMAND = Object.freeze(
  Object.create(Object.prototype, {
    commandId: { get() { return contextOf(this).commandId; } },
    tenantId: { get() { return contextOf(this).tenantId; } },
    aggregateId: { get() { return contextOf(this).aggregateId; } },
    metadata: { get() { return Object.freeze(Object.fromEntries(contextOf(this).metadata ?? [])); } },
  }),
);

/** Why `decide` produced no events: `kind` is `'rejected'` (a business rule) or `'invalid'`. */
export class DecideError extends Error {
  constructor(kind, message) {
    if (kind !== 'rejected' && kind !== 'invalid') {
      throw new TypeError(`DecideError kind must be 'rejected' or 'invalid', got ${String(kind)}`);
    }
    super(String(message));
    this.name = 'DecideError';
    this.kind = kind;
    // Recognised across copies of this module (instanceof would not be).
    Object.defineProperty(this, BRAND, { value: true });
  }

  /** Whether `e` is a DecideError (from any copy of the SDK). */
  static is(e) {
    return e !== null && typeof e === 'object' && e[BRAND] === true;
  }
}

/** A business rule refused the command: `throw rejected('account is not open')` (HTTP 422). */
export function rejected(message) {
  return new DecideError('rejected', message);
}

/** The command is malformed: `throw invalid('owner must not be empty')` (HTTP 400). */
export function invalid(message) {
  return new DecideError('invalid', message);
}

/** An event `{ type, ...payload }`. The payload must not have its own `type` field. */
export function event(type, payload = {}) {
  if (typeof type !== 'string' || type === '') {
    throw new TypeError(`event type must be a non-empty string, got ${describe(type)}`);
  }
  if (!isObject(payload)) throw new TypeError(`payload of \`${type}\` event must be an object`);
  if (Object.hasOwn(payload, 'type')) {
    throw new TypeError(`payload of \`${type}\` event must not have a \`type\` field`);
  }
  return copyFields({}, type, payload);
}

/** The error to throw for a command type `decide` does not know (a function `decide`). */
export function unknownCommand(command) {
  return invalid(`unknown command type \`${command?.type}\``);
}

/** The error to throw for an event type `apply` does not know (a function `apply`). */
export function unknownEvent(event) {
  return new Error(`unknown event type \`${event?.type}\``);
}

/**
 * `{ commandId, tenantId, aggregateId, metadata }` of a command `decide` received; `metadata` is
 * an object of the gateway's metadata (correlation id, trace parent, ...).
 */
export function commandContext(command) {
  const record = contextOf(command);
  return {
    commandId: record.commandId,
    tenantId: record.tenantId,
    aggregateId: record.aggregateId,
    metadata: Object.freeze(Object.fromEntries(record.metadata ?? [])),
  };
}

const KINDS = new Set(['string', 'integer', 'number', 'boolean', 'object', 'array', 'any']);

/**
 * Reads field `name` of a command (or any payload object) as `kind`: `'string'`, `'integer'`,
 * `'number'`, `'boolean'`, `'object'`, `'array'` or `'any'`; a trailing `?` (`'integer?'`) makes
 * it optional (missing or `null` gives `undefined`). Throws `invalid(...)` naming the field:
 * "invalid `deposit` command: missing field `amount`", "... invalid type for field `amount`:
 * expected integer, got string \"ten\"". Integers must be written as integers (`100`, not
 * `100.0`) and be exact in JavaScript (at most 2^53 - 1 in magnitude).
 */
export function field(command, name, kind) {
  return checkField(command, name, parseKind(kind));
}

function checkField(command, name, spec) {
  const value = Object.hasOwn(command, name) ? command[name] : undefined;
  if (value === undefined || value === null) {
    if (spec.optional) return undefined;
    if (value === undefined) throw invalid(`${fieldPrefix(command)}missing field \`${name}\``);
  }
  let ok;
  switch (spec.base) {
    case 'string':
    case 'boolean':
    case 'number':
      ok = typeof value === spec.base;
      break;
    case 'integer': {
      const note = numberNote(command, name);
      ok = typeof value === 'number' && Number.isInteger(value) && note?.kind !== 'float';
      if (ok && (note !== undefined || !Number.isSafeInteger(value))) {
        throw invalid(
          `${fieldPrefix(command)}invalid value for field \`${name}\`: integer ${note?.lexeme ?? value} is out of ` +
            `range (JavaScript integers are exact up to ±${Number.MAX_SAFE_INTEGER})`,
        );
      }
      if (ok && value === 0) return 0; // -0 → 0
      break;
    }
    case 'object':
      ok = isObject(value);
      break;
    case 'array':
      ok = Array.isArray(value);
      break;
    default: // any
      ok = true;
  }
  if (!ok) {
    const got = describe(value, numberNote(command, name));
    throw invalid(`${fieldPrefix(command)}invalid type for field \`${name}\`: expected ${spec.base}, got ${got}`);
  }
  return value;
}

function fieldPrefix(command) {
  return typeof command?.type === 'string' ? `invalid \`${command.type}\` command: ` : '';
}

/**
 * Defines an aggregate. `spec`:
 * - `init()`: the initial state (a JSON-serialisable value, usually an object).
 * - `decide(state, command)`: returns an array of events or throws `rejected`/`invalid`; or an
 *   object of such functions per command type (any other type is `invalid`, "unknown command
 *   type").
 * - `apply(state, event)`: returns the new state; or an object of such functions per event type
 *   (any other type makes `apply` fail).
 * - `commands` (optional): `{ [commandType]: { [field]: kind } }` (kinds as in `field`); each
 *   command is checked before `decide`, and only these types are accepted.
 * - `schemaVersion` (optional): the `schema-version` of produced events: a number, an object per
 *   event type (default 1), or a function of the event.
 * - `upcast(eventType, schemaVersion, payload)` (optional): rewrites a stored event payload
 *   (without `type`) of an older schema version into today's shape before `apply`.
 *
 * Returns a frozen `{ spec, commandTypes, eventTypes, component, encodeEvent }`: `component` holds
 * the WIT functions (what build.mjs exports and `testing.js` runs); `encodeEvent(event)` gives an
 * event's WIT record; the type lists are null when any type is passed to a function.
 */
export function defineAggregate(spec) {
  if (!isObject(spec)) throw new TypeError('defineAggregate needs an object { init, decide, apply }');
  const { init, decide, apply, commands, schemaVersion, upcast } = spec;
  if (typeof init !== 'function') throw new TypeError('defineAggregate: `init` must be a function');
  checkHandlers('decide', decide);
  checkHandlers('apply', apply);
  if (upcast !== undefined && typeof upcast !== 'function') {
    throw new TypeError('defineAggregate: `upcast` must be a function');
  }
  if (
    schemaVersion !== undefined &&
    typeof schemaVersion !== 'function' &&
    typeof schemaVersion !== 'number' &&
    !isObject(schemaVersion)
  ) {
    throw new TypeError('defineAggregate: `schemaVersion` must be a number, an object or a function');
  }
  let commandTypes = null;
  const checks = new Map(); // command type → [[field, kind]]
  if (commands !== undefined) {
    if (!isObject(commands)) throw new TypeError('defineAggregate: `commands` must be an object');
    for (const [type, fields] of Object.entries(commands)) {
      if (!isObject(fields)) throw new TypeError(`defineAggregate: commands.${type} must be an object of field kinds`);
      for (const kind of Object.values(fields)) parseKind(kind); // fails early on a typo
      if (typeof decide === 'object' && !Object.hasOwn(decide, type)) {
        throw new TypeError(`defineAggregate: command \`${type}\` has no decide.${type}`);
      }
    }
    commandTypes = Object.keys(commands);
    for (const type of commandTypes) {
      checks.set(type, Object.entries(commands[type]).map(([name, kind]) => [name, parseKind(kind)]));
    }
  } else if (typeof decide === 'object') {
    commandTypes = Object.keys(decide);
  }
  const eventTypes = typeof apply === 'object' ? Object.keys(apply) : null;
  const knownCommands = commandTypes && new Set(commandTypes);
  const knownEvents = eventTypes && new Set(eventTypes);

  function versionOf(e) {
    let v = 1;
    if (typeof schemaVersion === 'number') v = schemaVersion;
    else if (typeof schemaVersion === 'function') v = schemaVersion(e);
    else if (isObject(schemaVersion) && Object.hasOwn(schemaVersion, e.type)) v = schemaVersion[e.type];
    if (!Number.isInteger(v) || v < 1 || v > 0xffffffff) {
      throw new TypeError(`schema version of \`${e.type}\` event must be an integer from 1 to 2^32-1, got ${describe(v)}`);
    }
    return v;
  }

  function encodeEvent(e) {
    if (!isObject(e) || typeof e.type !== 'string' || e.type === '') {
      throw new TypeError(`decide must return events { type, ...payload } with a string type, got ${describe(e)}`);
    }
    const { type, ...payload } = e;
    return { eventType: type, schemaVersion: versionOf(e), payload: JSON.stringify(payload) };
  }

  function decodeCommand(record) {
    const type = record.commandType;
    let payload;
    try {
      payload = parseJson(record.payload);
    } catch (e) {
      throw invalid(`payload of \`${type}\` command is not JSON: ${e.message}`);
    }
    if (!isObject(payload)) throw invalid(`payload of \`${type}\` command must be a JSON object`);
    if (knownCommands !== null && !knownCommands.has(type)) {
      throw invalid(`unknown command type \`${type}\`, expected one of ${commandTypes.map((t) => `\`${t}\``).join(', ')}`);
    }
    const command = copyFields(Object.create(COMMAND), type, payload);
    copyNotes(payload, command);
    records.set(command, record);
    const fields = checks.get(type);
    if (fields !== undefined) {
      for (let i = 0; i < fields.length; i++) checkField(command, fields[i][0], fields[i][1]);
    }
    return command;
  }

  function runDecide(state, command) {
    const handler = typeof decide === 'function' ? decide : decide[command.type];
    const events = handler(state, command);
    if (typeof events?.then === 'function') {
      throw new TypeError(`decide of \`${command.type}\` must be synchronous, but it returned a Promise`);
    }
    if (!Array.isArray(events)) {
      throw new TypeError(`decide of \`${command.type}\` must return an array of events, got ${describe(events)}`);
    }
    return events;
  }

  function applyOne(state, record) {
    const type = record.eventType;
    const version = record.schemaVersion;
    const where = `\`${type}\` event (schema version ${version})`;
    let payload;
    try {
      payload = JSON.parse(record.payload);
    } catch (e) {
      throw new ApplyFailure(`payload of ${where} is not JSON: ${e.message}`);
    }
    if (upcast !== undefined) {
      try {
        payload = upcast(type, version, payload);
      } catch (e) {
        throw new ApplyFailure(`cannot upcast \`${type}\` event from schema version ${version}: ${messageOf(e)}`);
      }
    }
    if (!isObject(payload)) throw new ApplyFailure(`payload of ${where} must be a JSON object`);
    const ev = copyFields({}, type, payload);
    let handler = apply;
    if (knownEvents !== null) {
      if (!knownEvents.has(type)) {
        throw new ApplyFailure(
          `cannot apply ${where}: unknown event type \`${type}\`, expected one of ${eventTypes.map((t) => `\`${t}\``).join(', ')}`,
        );
      }
      handler = apply[type];
    }
    let next;
    try {
      next = handler(state, ev);
    } catch (e) {
      throw new ApplyFailure(`cannot apply ${where}: ${messageOf(e)}`);
    }
    if (next === undefined) throw new ApplyFailure(`apply of ${where} returned undefined; return the new state`);
    return next;
  }

  const component = Object.freeze({
    /** WIT `init: func() -> string`. */
    init() {
      const text = JSON.stringify(init());
      if (typeof text !== 'string') throw new TypeError('init must return a JSON-serialisable state');
      return text;
    },

    /** WIT `decide: func(state: string, command: command) -> result<list<event>, decide-error>`. */
    decide(stateText, record) {
      const state = JSON.parse(stateText); // a host bug if this fails: trap
      try {
        const command = decodeCommand(record);
        const events = runDecide(state, command);
        const out = new Array(events.length);
        for (let i = 0; i < events.length; i++) out[i] = encodeEvent(events[i]);
        return { tag: 'ok', val: out };
      } catch (e) {
        if (DecideError.is(e)) return { tag: 'err', val: { tag: e.kind, val: e.message } };
        throw e;
      }
    },

    /** WIT `apply: func(state: string, events: list<event>) -> result<string, string>`. */
    apply(stateText, records) {
      try {
        let state;
        try {
          state = JSON.parse(stateText);
        } catch (e) {
          return { tag: 'err', val: `state is not JSON: ${e.message}` };
        }
        for (let i = 0; i < records.length; i++) state = applyOne(state, records[i]);
        const text = JSON.stringify(state);
        if (typeof text !== 'string') return { tag: 'err', val: 'apply produced a state that is not JSON-serialisable' };
        return { tag: 'ok', val: text };
      } catch (e) {
        return { tag: 'err', val: messageOf(e) };
      }
    },
  });

  return Object.freeze({ spec, commandTypes, eventTypes, component, encodeEvent });
}

class ApplyFailure extends Error {}

function checkHandlers(what, h) {
  if (typeof h === 'function') return;
  if (isObject(h) && Object.values(h).every((f) => typeof f === 'function')) return;
  throw new TypeError(`defineAggregate: \`${what}\` must be a function or an object of functions per type`);
}

function parseKind(kind) {
  const optional = typeof kind === 'string' && kind.endsWith('?');
  const base = optional ? kind.slice(0, -1) : kind;
  if (!KINDS.has(base)) {
    throw new TypeError(`field kind must be one of ${[...KINDS].join(', ')} (optionally with ?), got ${describe(kind)}`);
  }
  return { base, optional };
}

function isObject(v) {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

// Sets `type`, then copies the own enumerable fields of `from` except `type`. Keys that exist on
// the prototype chain (`__proto__`, the command accessors) are defined, not assigned, so they
// become plain own fields.
// (Indexed loops: the guest's interpreter runs them several times faster than for-of.)
function copyFields(to, type, from) {
  to.type = type;
  const keys = Object.keys(from);
  for (let i = 0; i < keys.length; i++) {
    const key = keys[i];
    if (key === 'type') continue;
    if (key in to) {
      Object.defineProperty(to, key, { value: from[key], writable: true, enumerable: true, configurable: true });
    } else {
      to[key] = from[key];
    }
  }
  return to;
}

function messageOf(e) {
  if (e instanceof Error) return e.message;
  return String(e);
}

function describe(v, note) {
  if (note?.kind === 'float') return `floating point ${note.lexeme}`;
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  switch (typeof v) {
    case 'string': {
      const s = JSON.stringify(v);
      return `string ${s.length > 40 ? `${s.slice(0, 37)}..."` : s}`;
    }
    case 'number':
      return `${Number.isInteger(v) ? 'integer' : 'number'} ${v}`;
    case 'boolean':
      return `boolean ${v}`;
    case 'object':
      return 'an object';
    default:
      return typeof v;
  }
}
