// The `aggregate-host new --lang js` template: scaffolded the way the CLI does it (placeholders
// substituted, `.tmpl` dropped), it passes its own tests with `node --test` and stages for a build.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, mkdir, readdir, readFile, writeFile, rm } from 'node:fs/promises';
import { spawnSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { stage, SDK_DIR } from '../stage.js';

const TEMPLATE = join(SDK_DIR, 'template');

// A fresh `node --test`, not a child of this test run (which Node.js marks in the environment).
function nodeTest(cwd) {
  const env = { ...process.env };
  delete env.NODE_TEST_CONTEXT;
  return spawnSync(process.execPath, ['--test'], { cwd, env, encoding: 'utf8' });
}

async function scaffold(name, dir) {
  const written = [];
  for (const file of await readdir(TEMPLATE)) {
    const text = await readFile(join(TEMPLATE, file), 'utf8');
    const out = join(dir, file.replace(/\.tmpl$/, ''));
    await writeFile(
      out,
      text.replaceAll('__NAME_SNAKE__', name.replaceAll('-', '_')).replaceAll('__NAME__', name).replaceAll('__SDK__', SDK_DIR),
    );
    written.push(file.replace(/\.tmpl$/, ''));
  }
  return written.sort();
}

test('a scaffolded project tests green with node --test and no npm install', async (t) => {
  const root = await mkdtemp(join(tmpdir(), 'template-test-'));
  t.after(() => rm(root, { recursive: true, force: true }));
  const dir = join(root, 'my-counter');
  await mkdir(dir);
  const files = await scaffold('my-counter', dir);
  assert.deepEqual(files, ['.gitignore', 'aggregate.js', 'aggregate.test.js', 'package.json']);
  for (const f of files) {
    const text = await readFile(join(dir, f), 'utf8');
    assert.ok(!/__[A-Z_]+__/.test(text), `${f} keeps a placeholder`);
  }
  const pkg = JSON.parse(await readFile(join(dir, 'package.json'), 'utf8'));
  assert.equal(pkg.name, 'my-counter');
  assert.equal(pkg.type, 'module');
  assert.equal(pkg.main, 'aggregate.js');
  assert.equal(pkg.scripts.build, `node ${SDK_DIR}/build.mjs aggregate.js my-counter.wasm`);

  const run = nodeTest(dir);
  assert.equal(run.status, 0, run.stdout + run.stderr);
  assert.match(run.stdout, /^# pass 4$/m);
  assert.match(run.stdout, /^# fail 0$/m);

  const staging = join(root, 'staging');
  await mkdir(staging);
  const { modules } = await stage(join(dir, 'aggregate.js'), staging);
  assert.deepEqual(modules.map((m) => m.staged.slice(staging.length + 1)).sort(), ['app/aggregate.js', 'sdk/aggregate.js', 'sdk/json.js']);
});

test('the scaffolded tests can fail: a broken aggregate is reported', async (t) => {
  const root = await mkdtemp(join(tmpdir(), 'template-test-'));
  t.after(() => rm(root, { recursive: true, force: true }));
  await scaffold('counter', root);
  const source = await readFile(join(root, 'aggregate.js'), 'utf8');
  await writeFile(join(root, 'aggregate.js'), source.replace('state.value + by', 'state.value - by'));
  const run = nodeTest(root);
  assert.notEqual(run.status, 0);
  assert.match(run.stdout, /states differ/);
});
