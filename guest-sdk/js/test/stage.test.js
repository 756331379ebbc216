// stage(): the module graph handed to componentize-js, and build.mjs's command line.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, mkdir, writeFile, readFile, rm } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { stage, resolveSpecifier, SDK_DIR, SDK_ENTRY } from '../stage.js';
import { parseArgs } from '../build.mjs';

async function project(files) {
  const root = await mkdtemp(join(tmpdir(), 'stage-test-'));
  for (const [path, text] of Object.entries(files)) {
    await mkdir(join(root, path, '..'), { recursive: true });
    await writeFile(join(root, path), text);
  }
  return root;
}

test('stages the graph: SDK by name or path, relative files above and below, re-exports', async (t) => {
  const root = await project({
    'proj/src/aggregate.js': `import { defineAggregate, event } from '@aggregate-host/sdk';
import { limit } from './rules/limits.js';
import { greet } from "../../shared/names.js";
export default defineAggregate({
  init: () => ({ n: 0 }),
  decide: (s, c) => [event('said', { text: greet(c.name), limit })],
  apply: (s) => ({ n: s.n + 1 }),
});
`,
    'proj/src/rules/limits.js': `export * from './base.js';\nexport const limit = 3;\n`,
    'proj/src/rules/base.js': `export const base = 1;\n`,
    'shared/names.js': `import { invalid } from ${JSON.stringify(SDK_ENTRY)};
export function greet(name) { if (!name) throw invalid('no name'); return 'hello ' + name; }
`,
  });
  const staging = join(root, 'staging');
  await mkdir(staging);
  t.after(() => rm(root, { recursive: true, force: true }));

  const { entry, modules } = await stage(join(root, 'proj/src/aggregate.js'), staging);
  assert.equal(entry, join(staging, 'entry.js'));
  const staged = modules.map((m) => m.staged.slice(staging.length + 1)).sort();
  assert.deepEqual(staged, [
    'app/proj/src/aggregate.js',
    'app/proj/src/rules/base.js',
    'app/proj/src/rules/limits.js',
    'app/shared/names.js',
    'sdk/aggregate.js',
    'sdk/json.js',
  ]);
  const main = await readFile(join(staging, 'app/proj/src/aggregate.js'), 'utf8');
  assert.match(main, /from '\.\.\/\.\.\/\.\.\/sdk\/aggregate\.js'/);
  assert.match(main, /from '\.\/rules\/limits\.js'/);
  assert.match(main, /from "\.\.\/\.\.\/shared\/names\.js"/);
  const names = await readFile(join(staging, 'app/shared/names.js'), 'utf8');
  assert.match(names, /from "\.\.\/\.\.\/sdk\/aggregate\.js"/);
  assert.ok(!main.includes('@aggregate-host/sdk'));

  // The staged graph is self-contained: Node.js loads it without any resolve hooks, and the
  // generated entry exports the WIT functions.
  const mod = await import(pathToFileURL(entry).href);
  assert.deepEqual(Object.keys(mod).sort(), ['apply', 'decide', 'init']);
  assert.equal(mod.init(), '{"n":0}');
  const ok = mod.decide('{"n":0}', {
    commandId: 'c',
    commandType: 'say',
    payload: '{"name":"ann"}',
    tenantId: '',
    aggregateId: 'a',
    metadata: [],
  });
  assert.deepEqual(ok, { tag: 'ok', val: [{ eventType: 'said', schemaVersion: 1, payload: '{"text":"hello ann","limit":3}' }] });
  const refused = mod.decide('{"n":0}', { commandId: 'c', commandType: 'say', payload: '{}', tenantId: '', aggregateId: 'a', metadata: [] });
  assert.deepEqual(refused, { tag: 'err', val: { tag: 'invalid', val: 'no name' } });
});

test('a dynamic import with a literal specifier is staged and rewritten', async (t) => {
  const root = await project({
    'a.js': `export default (await import('./b.js')).default;\n`,
    'b.js': `import { defineAggregate } from '@aggregate-host/sdk';
export default defineAggregate({ init: () => ({}), decide: () => [], apply: (s) => s });\n`,
  });
  const staging = join(root, 'staging');
  await mkdir(staging);
  t.after(() => rm(root, { recursive: true, force: true }));
  await stage(join(root, 'a.js'), staging);
  assert.match(await readFile(join(staging, 'app/a.js'), 'utf8'), /import\("\.\/b\.js"\)/);
  assert.ok(existsSync(join(staging, 'app/b.js')));
  const mod = await import(pathToFileURL(join(staging, 'entry.js')).href);
  assert.equal(mod.init(), '{}');
});

test('what a guest cannot load is refused with the file and the specifier', async (t) => {
  const root = await project({
    'pkg.js': `import _ from 'lodash';\n`,
    'builtin.js': `import fs from 'node:fs';\n`,
    'missing.js': `import x from './nope.js';\n`,
    'computed.js': `const m = await import(name);\n`,
    'broken.js': `import { from './x.js';\n`,
  });
  t.after(() => rm(root, { recursive: true, force: true }));
  const run = async (file) => {
    const staging = await mkdtemp(join(root, 'staging-'));
    return stage(join(root, file), staging);
  };
  await assert.rejects(run('pkg.js'), /pkg\.js: cannot import 'lodash': a component can import only '@aggregate-host\/sdk'/);
  await assert.rejects(run('builtin.js'), /cannot import 'node:fs'/);
  await assert.rejects(run('missing.js'), /missing\.js: imports '\.\/nope\.js', but .*nope\.js is not a file/);
  await assert.rejects(run('computed.js'), /computed\.js: import\(\) with a computed specifier/);
  await assert.rejects(run('broken.js'), /broken\.js: cannot parse as an ES module/);
});

test('resolveSpecifier', () => {
  assert.equal(resolveSpecifier('@aggregate-host/sdk', '/p/a.js'), SDK_ENTRY);
  assert.equal(resolveSpecifier('./b.js', '/p/q/a.js'), '/p/q/b.js');
  assert.equal(resolveSpecifier('../b.js', '/p/q/a.js'), '/p/b.js');
  assert.equal(resolveSpecifier('/abs/b.js', '/p/a.js'), '/abs/b.js');
  assert.equal(resolveSpecifier('file:///abs/c.js', '/p/a.js'), '/abs/c.js');
  assert.throws(() => resolveSpecifier('@aggregate-host/sdk/testing', '/p/a.js'), /cannot import/);
});

test('build.mjs arguments', () => {
  const a = parseArgs(['agg.js', 'out/agg.wasm']);
  assert.equal(a.entry, join(process.cwd(), 'agg.js'));
  assert.equal(a.out, join(process.cwd(), 'out/agg.wasm'));
  assert.equal(a.wit, join(SDK_DIR, '..', '..', 'wit'));
  assert.ok(existsSync(join(a.wit, 'aggregate.wit')), 'the default WIT folder is the repository wit/');
  assert.equal(parseArgs(['--wit', '/w', 'a.js', 'b.wasm']).wit, '/w');
  assert.equal(parseArgs(['a.js', 'b.wasm', '--wit=/x/aggregate.wit']).wit, '/x/aggregate.wit');
  assert.throws(() => parseArgs(['a.js']), /usage: node build\.mjs/);
  assert.throws(() => parseArgs(['a.js', 'b.wasm', 'c']), /usage/);
  assert.throws(() => parseArgs(['a.js', 'b.wasm', '--fast']), /unknown option --fast/);
  assert.throws(() => parseArgs(['a.js', 'b.wasm', '--wit']), /--wit needs a path/);
  assert.deepEqual(parseArgs(['a.js', 'b.wasm']).disabled, ['random', 'stdio', 'clocks', 'http', 'fetch-event']);
  assert.deepEqual(
    parseArgs(['a.js', '--keep-feature', 'http', 'b.wasm']).disabled,
    ['random', 'stdio', 'clocks', 'fetch-event'],
  );
  assert.throws(() => parseArgs(['a.js', 'b.wasm', '--keep-feature', 'net']), /--keep-feature needs one of/);
  assert.throws(() => parseArgs(['a.js', 'b.wasm', '--keep-feature']), /--keep-feature needs one of/);
});
