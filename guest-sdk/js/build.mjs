#!/usr/bin/env node
// Builds a JavaScript aggregate into a WebAssembly component with componentize-js.
//
//   node <guest-sdk/js>/build.mjs <entry.js> <out.wasm> [--wit <dir or file>]
//        [--keep-feature <name>]...
//
// <entry.js> must `export default defineAggregate({...})` (importing '@aggregate-host/sdk').
// Steps: load the entry in Node.js (fails early, with a stack trace, on a broken aggregate), stage
// its module graph with the SDK (stage.js), run componentize-js on the world `aggregate` of the
// WIT (default: the repository's wit/ folder) with every optional feature disabled, and check
// that the component imports nothing.
//
// `--keep-feature <name>` (repeatable) leaves one of those features on. Only the host's own tests
// use it: `--keep-feature http` builds a component that imports `wasi:http`, which the host must
// refuse (example-aggregates/forbidden-http-js).

import { mkdtemp, rm, writeFile, mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { pathToFileURL, fileURLToPath } from 'node:url';
import { register } from 'node:module';
import { stage, SDK_DIR } from './stage.js';

const USAGE =
  'usage: node build.mjs <entry.js> <out.wasm> [--wit <dir or file>] [--keep-feature <name>]...';
// stdio, random, clocks, http, fetch-event: without them the component imports nothing at all.
const DISABLED = ['random', 'stdio', 'clocks', 'http', 'fetch-event'];

function parseArgs(argv) {
  const positional = [];
  const keep = [];
  let wit = join(SDK_DIR, '..', '..', 'wit');
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--keep-feature') {
      const f = argv[++i];
      if (!DISABLED.includes(f)) {
        throw new Error(`--keep-feature needs one of ${DISABLED.join(', ')}\n${USAGE}`);
      }
      keep.push(f);
    } else if (a === '--wit') {
      if (i + 1 >= argv.length) throw new Error(`--wit needs a path\n${USAGE}`);
      wit = argv[++i];
    } else if (a.startsWith('--wit=')) {
      wit = a.slice('--wit='.length);
    } else if (a === '-h' || a === '--help') {
      console.log(USAGE);
      process.exit(0);
    } else if (a.startsWith('-')) {
      throw new Error(`unknown option ${a}\n${USAGE}`);
    } else {
      positional.push(a);
    }
  }
  if (positional.length !== 2) throw new Error(USAGE);
  return {
    entry: resolve(positional[0]),
    out: resolve(positional[1]),
    wit: resolve(wit),
    disabled: DISABLED.filter((f) => !keep.includes(f)),
  };
}

/** Loads the entry in Node.js and checks it is an aggregate whose `init` gives JSON. */
async function check(entry) {
  register('./resolve-hooks.js', import.meta.url);
  let mod;
  try {
    mod = await import(pathToFileURL(entry).href);
  } catch (e) {
    throw new Error(`${entry} does not load in Node.js:\n${e?.stack ?? e}`);
  }
  const c = mod.default?.component;
  if (!c || typeof c.decide !== 'function') {
    throw new Error(`${entry} must \`export default defineAggregate({...})\``);
  }
  JSON.parse(c.init());
}

/** The imports of a component, from the WIT jco prints for it. */
async function importsOf(component) {
  const { componentWit } = await import('@bytecodealliance/jco');
  const wit = await componentWit(component);
  return [...wit.matchAll(/^\s*import\s+([^;]+);/gm)].map((m) => m[1].trim());
}

async function main() {
  const { entry, out, wit, disabled } = parseArgs(process.argv.slice(2));
  const started = performance.now();
  await check(entry);
  let componentize;
  try {
    ({ componentize } = await import('@bytecodealliance/componentize-js'));
  } catch (e) {
    throw new Error(`componentize-js is not installed: run \`npm ci\` in ${SDK_DIR} (${e.message})`);
  }
  const staging = await mkdtemp(join(tmpdir(), 'aggregate-js-'));
  const cwd = process.cwd();
  let component;
  try {
    const staged = await stage(entry, staging);
    // componentize-js maps the current directory into the guest when the source is below it;
    // run from the staging folder so exactly the staged modules are visible.
    process.chdir(staging);
    ({ component } = await componentize({
      sourcePath: staged.entry,
      witPath: wit,
      worldName: 'aggregate',
      disableFeatures: disabled,
    }));
  } finally {
    process.chdir(cwd);
    await rm(staging, { recursive: true, force: true });
  }
  const imports = await importsOf(component);
  const foreign = imports.filter((i) => !/^wasi:[^/]+\/[^@]+@0\.2\./.test(i));
  if (foreign.length > 0) {
    throw new Error(`the component imports ${foreign.join(', ')}; the host provides only WASI 0.2`);
  }
  await mkdir(dirname(out), { recursive: true });
  await writeFile(out, component);
  const seconds = ((performance.now() - started) / 1000).toFixed(1);
  const mb = (component.length / 1e6).toFixed(1);
  console.log(
    `wrote ${out}: ${component.length} bytes (${mb} MB) in ${seconds} s; ` +
      `imports: ${imports.length === 0 ? 'none' : imports.join(', ')}`,
  );
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main().catch((e) => {
    console.error(`build.mjs: ${e instanceof Error ? e.message : e}`);
    if (process.env.AGGREGATE_BUILD_DEBUG) console.error(e);
    process.exit(1);
  });
}

export { parseArgs, importsOf };
