// A strict JSON parser for command payloads that remembers how numbers were written.
//
// `JSON.parse` turns `100`, `100.0` and `1e2` into the same number, and silently rounds integers
// beyond 2^53. The Rust reference SDK (serde_json into an `i64`) refuses `100.0` and `1e2` as
// "not an integer" and keeps every 64-bit integer exact. To answer an integer field exactly like
// it, the payload is parsed here and every number that is not a plain, exactly representable
// integer is noted against the object (or array) holding it; `numberNote` reads the note.
//
// Accepts exactly RFC 8259 JSON (what `JSON.parse` accepts) and builds the same values, including
// own `__proto__` keys. Nesting deeper than 128 levels is refused, like serde_json.

const notes = new WeakMap();
const MAX_DEPTH = 128;

/**
 * How the number stored under `key` of `holder` was written, when that matters for an integer
 * field: `{ kind: 'float', lexeme }` for a fraction or exponent (`1.5`, `100.0`, `1e2`),
 * `{ kind: 'unsafe', lexeme }` for an integer beyond ±(2^53 - 1). `undefined` otherwise, or when
 * `holder` was not produced by `parseJson`.
 */
export function numberNote(holder, key) {
  return notes.get(holder)?.get(key);
}

/** Copies the number notes of `from` onto `to` (for an object rebuilt from a parsed one). */
export function copyNotes(from, to) {
  const n = notes.get(from);
  if (n) notes.set(to, new Map(n));
}

// Outside strings, a fraction, an exponent or 16 digits in a row: only then do numbers need notes.
const STRINGS = /"(?:[^"\\]|\\.)*"/g;
const NOTEWORTHY = /[.eE]|[0-9]{16}/;
const OPENERS = /[[{]/g; // more than MAX_DEPTH of them may nest too deep

/** Parses `text` as JSON; throws a `SyntaxError` naming line and column on bad input. */
export function parseJson(text) {
  if (typeof text !== 'string') throw new TypeError('JSON text must be a string');
  // The engine's parser is much faster than this one in an interpreted guest; use it when no
  // number needs a note (and for a valid text: both give the same values).
  const bare = text.replace(STRINGS, '""');
  if (!NOTEWORTHY.test(bare) && (bare.length <= MAX_DEPTH || (bare.match(OPENERS)?.length ?? 0) <= MAX_DEPTH)) {
    try {
      return JSON.parse(text);
    } catch {
      // Fall through for this parser's error message.
    }
  }
  const p = new Parser(text);
  p.ws();
  const value = p.value(0);
  p.ws();
  if (p.i < text.length) p.fail('trailing characters');
  return value;
}

function note(holder, key, kind, lexeme) {
  let n = notes.get(holder);
  if (!n) notes.set(holder, (n = new Map()));
  n.set(key, { kind, lexeme });
}

function unnote(holder, key) {
  notes.get(holder)?.delete(key);
}

const NUMBER = /-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?/y;
const PLAIN = /[^"\\\u0000-\u001f]*/y;
const ESCAPES = { '"': '"', '\\': '\\', '/': '/', b: '\b', f: '\f', n: '\n', r: '\r', t: '\t' };

class Parser {
  constructor(text) {
    this.s = text;
    this.i = 0;
  }

  fail(what) {
    const before = this.s.slice(0, this.i);
    const line = before.split('\n').length;
    const column = this.i - before.lastIndexOf('\n');
    throw new SyntaxError(`${what} at line ${line} column ${column}`);
  }

  ws() {
    const s = this.s;
    let i = this.i;
    for (;;) {
      const c = s.charCodeAt(i);
      if (c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09) i++;
      else break;
    }
    this.i = i;
  }

  // Parses one value; `holder`/`key` say where it goes, so numbers can be noted there.
  value(depth, holder, key) {
    const c = this.s[this.i];
    switch (c) {
      case '{':
        return this.object(depth + 1);
      case '[':
        return this.array(depth + 1);
      case '"':
        return this.string();
      case 't':
        return this.word('true', true);
      case 'f':
        return this.word('false', false);
      case 'n':
        return this.word('null', null);
      default:
        if (c === '-' || (c >= '0' && c <= '9')) return this.number(holder, key);
        return this.fail(c === undefined ? 'EOF while parsing a value' : 'expected value');
    }
  }

  word(w, v) {
    if (this.s.startsWith(w, this.i)) {
      this.i += w.length;
      return v;
    }
    return this.fail('expected value');
  }

  number(holder, key) {
    NUMBER.lastIndex = this.i;
    const m = NUMBER.exec(this.s);
    if (!m) return this.fail('invalid number');
    this.i += m[0].length;
    const lexeme = m[0];
    const n = Number(lexeme);
    if (holder !== undefined) {
      if (m[1] !== undefined || m[2] !== undefined) note(holder, key, 'float', lexeme);
      else if (!Number.isSafeInteger(n)) note(holder, key, 'unsafe', lexeme);
    }
    return n;
  }

  string() {
    const s = this.s;
    this.i++; // opening quote
    let out = '';
    for (;;) {
      PLAIN.lastIndex = this.i;
      const run = PLAIN.exec(s)[0];
      out += run;
      this.i += run.length;
      const c = s[this.i];
      if (c === '"') {
        this.i++;
        return out;
      }
      if (c === undefined) return this.fail('EOF while parsing a string');
      if (c !== '\\') return this.fail('control character in string');
      const e = s[this.i + 1];
      if (e === 'u') {
        const hex = s.slice(this.i + 2, this.i + 6);
        if (!/^[0-9a-fA-F]{4}$/.test(hex)) {
          this.i++;
          return this.fail('invalid unicode escape');
        }
        out += String.fromCharCode(parseInt(hex, 16));
        this.i += 6;
      } else if (e !== undefined && Object.hasOwn(ESCAPES, e)) {
        out += ESCAPES[e];
        this.i += 2;
      } else {
        this.i++;
        return this.fail('invalid escape');
      }
    }
  }

  object(depth) {
    if (depth > MAX_DEPTH) this.fail('recursion limit exceeded');
    this.i++; // {
    const obj = {};
    this.ws();
    if (this.s[this.i] === '}') {
      this.i++;
      return obj;
    }
    for (;;) {
      if (this.s[this.i] !== '"') this.fail('key must be a string');
      const key = this.string();
      this.ws();
      if (this.s[this.i] !== ':') this.fail('expected `:`');
      this.i++;
      this.ws();
      unnote(obj, key); // a repeated key replaces the earlier value, and its note
      const v = this.value(depth, obj, key);
      if (key === '__proto__') {
        Object.defineProperty(obj, key, { value: v, writable: true, enumerable: true, configurable: true });
      } else {
        obj[key] = v;
      }
      this.ws();
      const c = this.s[this.i];
      this.i++;
      if (c === '}') return obj;
      if (c !== ',') {
        this.i--;
        this.fail(c === undefined ? 'EOF while parsing an object' : 'expected `,` or `}`');
      }
      this.ws();
    }
  }

  array(depth) {
    if (depth > MAX_DEPTH) this.fail('recursion limit exceeded');
    this.i++; // [
    const arr = [];
    this.ws();
    if (this.s[this.i] === ']') {
      this.i++;
      return arr;
    }
    for (;;) {
      arr.push(this.value(depth, arr, arr.length));
      this.ws();
      const c = this.s[this.i];
      this.i++;
      if (c === ']') return arr;
      if (c !== ',') {
        this.i--;
        this.fail(c === undefined ? 'EOF while parsing a list' : 'expected `,` or `]`');
      }
      this.ws();
    }
  }
}
