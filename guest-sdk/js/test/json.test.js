import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseJson, numberNote } from '../json.js';

test('parses what JSON.parse parses, to the same values', () => {
  const samples = [
    '{}',
    '[]',
    ' {"a" : 1 , "b":[true,false,null], "c": {"d": "e"}} ',
    '"plain"',
    '"esc \\" \\\\ \\/ \\b \\f \\n \\r \\t \\u00e9 \\ud83e\\udd80"',
    '"Zoë 🦀"',
    '-0',
    '0',
    '12345678901234567890',
    '-1.5e-3',
    '1E+2',
    '[[[[]]]]',
    '{"a":1,"a":2}',
    '{"__proto__": {"x": 1}, "constructor": 3}',
    '\t\r\n[1]\n',
  ];
  for (const s of samples) {
    assert.deepStrictEqual(parseJson(s), JSON.parse(s), s);
  }
  const proto = parseJson('{"__proto__": 5}');
  assert.equal(Object.getPrototypeOf(proto), Object.prototype);
  assert.deepEqual(Object.keys(proto), ['__proto__']);
  assert.equal(Object.getOwnPropertyDescriptor(proto, '__proto__').value, 5); // an own field
});

test('refuses what JSON.parse refuses, naming line and column', () => {
  const bad = [
    '',
    ' ',
    '{',
    '{"a"}',
    '{"a":1,}',
    '[1,]',
    '[1 2]',
    "{'a':1}",
    '{a:1}',
    '01',
    '1.',
    '.5',
    '+1',
    '-',
    '1e',
    'tru',
    'nul',
    'NaN',
    'Infinity',
    '"unterminated',
    '"tab\there"',
    '"\\x"',
    '"\\u12"',
    '{} {}',
    '[1] x',
  ];
  for (const s of bad) {
    assert.throws(() => JSON.parse(s), SyntaxError, `JSON.parse accepts ${JSON.stringify(s)}`);
    assert.throws(() => parseJson(s), SyntaxError, JSON.stringify(s));
  }
  assert.throws(() => parseJson('{\n  "a": 1,\n  x}'), { message: 'key must be a string at line 3 column 3' });
  assert.throws(() => parseJson('[1] x'), { message: 'trailing characters at line 1 column 5' });
});

test('nesting deeper than 128 levels is refused', () => {
  assert.deepEqual(parseJson('['.repeat(128) + ']'.repeat(128)).length, 1);
  assert.throws(() => parseJson('['.repeat(129) + ']'.repeat(129)), /recursion limit exceeded/);
  assert.throws(() => parseJson('{"a":'.repeat(200) + '1' + '}'.repeat(200)), /recursion limit exceeded/);
});

test('numbers written as fractions or exponents, or beyond 2^53, are noted', () => {
  const v = parseJson('{"i": 100, "f": 100.0, "e": 1e2, "big": 9007199254740993, "max": 9007199254740991, "neg": -9007199254740992, "list": [1, 2.5]}');
  assert.equal(v.f, 100);
  assert.equal(numberNote(v, 'i'), undefined);
  assert.deepEqual(numberNote(v, 'f'), { kind: 'float', lexeme: '100.0' });
  assert.deepEqual(numberNote(v, 'e'), { kind: 'float', lexeme: '1e2' });
  assert.deepEqual(numberNote(v, 'big'), { kind: 'unsafe', lexeme: '9007199254740993' });
  assert.equal(numberNote(v, 'max'), undefined);
  assert.deepEqual(numberNote(v, 'neg'), { kind: 'unsafe', lexeme: '-9007199254740992' });
  assert.equal(numberNote(v.list, 0), undefined);
  assert.deepEqual(numberNote(v.list, 1), { kind: 'float', lexeme: '2.5' });
  // A repeated key takes the note of its last value only.
  const d = parseJson('{"a": 1.5, "a": 2}');
  assert.equal(d.a, 2);
  assert.equal(numberNote(d, 'a'), undefined);
  assert.equal(numberNote(JSON.parse('{"f": 1.5}'), 'f'), undefined);
});

test('the fast path (engine parser) and the noting parser agree', () => {
  // Digits, dots and exponents inside strings do not force the slow path, and change nothing.
  const text = '{"s": "1.5e3 \\" 12345678901234567", "n": 2, "list": [{"k": "e"}]}';
  const v = parseJson(text);
  assert.deepStrictEqual(v, JSON.parse(text));
  assert.equal(numberNote(v, 'n'), undefined);
  // A float after a string with an escaped quote is still noted.
  const w = parseJson('{"s": "say \\"hi\\"", "f": 0.5}');
  assert.deepEqual(numberNote(w, 'f'), { kind: 'float', lexeme: '0.5' });
  // Many sibling containers (not deep) still parse.
  const wide = `[${'{},'.repeat(300)}{}]`;
  assert.equal(parseJson(wide).length, 301);
});
