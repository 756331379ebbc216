// Stages an aggregate's module graph for componentize-js.
//
// componentize-js runs one module (and the files it imports by relative path, from a single
// folder it maps into the guest). An aggregate imports the SDK by its package name
// (`@aggregate-host/sdk`), which the guest cannot resolve, and may sit anywhere on disk. So the
// build copies every module the entry reaches into a staging folder:
//
//   <staging>/entry.js   generated: imports the author's default export and exports the WIT
//                        functions `init`, `decide`, `apply` of `aggregate.component`
//   <staging>/sdk/...    the SDK's modules
//   <staging>/app/...    the author's modules, laid out as on disk below their common folder
//
// rewriting every import specifier to the relative path between the staged copies. Only the SDK
// and relative (or absolute) file imports are allowed: there is no package resolution in the guest.

import { readFile, writeFile, mkdir, realpath, stat } from 'node:fs/promises';
import { dirname, join, relative, resolve, sep, isAbsolute } from 'node:path';
import { fileURLToPath } from 'node:url';

export const SDK_DIR = dirname(fileURLToPath(import.meta.url));
export const SDK_ENTRY = join(SDK_DIR, 'aggregate.js');
const SDK_NAME = '@aggregate-host/sdk';

let lexer;
async function parseImports(source, file) {
  if (!lexer) {
    try {
      lexer = await import('es-module-lexer');
    } catch (e) {
      throw new Error(`es-module-lexer is missing (run npm ci in ${SDK_DIR}): ${e.message}`);
    }
    await lexer.init;
  }
  try {
    return lexer.parse(source, file)[0];
  } catch (e) {
    throw new Error(`${file}: cannot parse as an ES module: ${e.message}`);
  }
}

async function isFile(path) {
  try {
    return (await stat(path)).isFile();
  } catch {
    return false;
  }
}

/** Where `specifier`, imported by `file`, points on disk; throws for what a guest cannot load. */
export function resolveSpecifier(specifier, file) {
  if (specifier === SDK_NAME) return SDK_ENTRY;
  if (specifier.startsWith('./') || specifier.startsWith('../')) return resolve(dirname(file), specifier);
  if (specifier.startsWith('file:')) return fileURLToPath(specifier);
  if (isAbsolute(specifier)) return specifier;
  throw new Error(
    `${file}: cannot import '${specifier}': a component can import only '${SDK_NAME}' and ` +
      'files by relative path (there are no packages or Node.js built-ins inside the guest)',
  );
}

function isInside(dir, path) {
  const rel = relative(dir, path);
  return rel !== '' && !rel.startsWith('..') && !isAbsolute(rel);
}

function commonDir(paths) {
  let dir = dirname(paths[0]);
  while (!paths.every((p) => isInside(dir, p))) {
    const up = dirname(dir);
    if (up === dir) break;
    dir = up;
  }
  return dir;
}

function specifierBetween(fromFile, toFile) {
  const rel = relative(dirname(fromFile), toFile).split(sep).join('/');
  return rel.startsWith('.') ? rel : `./${rel}`;
}

/**
 * Copies the module graph of `entry` into `staging` (an existing, empty folder) and writes the
 * generated `entry.js`. Returns `{ entry, modules }`: the generated entry's path and, for each
 * module, `{ source, staged }`.
 */
export async function stage(entry, staging) {
  const sdkDir = await realpath(SDK_DIR);
  const first = await realpath(resolve(entry));
  const graph = new Map(); // real path → { text, imports: [{ start, end, dynamic, target }] }
  const queue = [first];
  while (queue.length > 0) {
    const file = queue.shift();
    if (graph.has(file)) continue;
    const text = await readFile(file, 'utf8');
    const imports = [];
    for (const imp of await parseImports(text, file)) {
      if (imp.d === -2) continue; // import.meta
      if (imp.n === undefined) {
        throw new Error(`${file}: import() with a computed specifier cannot be built into a component`);
      }
      const path = resolveSpecifier(imp.n, file);
      if (!(await isFile(path))) throw new Error(`${file}: imports '${imp.n}', but ${path} is not a file`);
      const target = await realpath(path);
      imports.push({ start: imp.s, end: imp.e, dynamic: imp.d > -1, target });
      queue.push(target);
    }
    graph.set(file, { text, imports });
  }

  const isSdk = (p) => isInside(sdkDir, p) && !isInside(join(sdkDir, 'node_modules'), p);
  const appFiles = [...graph.keys()].filter((p) => !isSdk(p));
  const appRoot = appFiles.length > 0 ? commonDir(appFiles) : dirname(first);
  const stagedPath = (p) =>
    isSdk(p) ? join(staging, 'sdk', relative(sdkDir, p)) : join(staging, 'app', relative(appRoot, p));

  const modules = [];
  for (const [file, { text, imports }] of graph) {
    const to = stagedPath(file);
    let out = text;
    for (const imp of [...imports].sort((a, b) => b.start - a.start)) {
      const spec = specifierBetween(to, stagedPath(imp.target));
      out = out.slice(0, imp.start) + (imp.dynamic ? JSON.stringify(spec) : spec) + out.slice(imp.end);
    }
    await mkdir(dirname(to), { recursive: true });
    await writeFile(to, out);
    modules.push({ source: file, staged: to });
  }

  // Lets Node.js load the staged graph as ES modules too (for inspection and tests).
  await writeFile(join(staging, 'package.json'), '{ "type": "module" }\n');
  const generated = join(staging, 'entry.js');
  const label = JSON.stringify(relative(appRoot, first).split(sep).join('/'));
  await writeFile(
    generated,
    `// Generated by build.mjs: exports the WIT world of the aggregate ${label}.
import aggregate from ${JSON.stringify(specifierBetween(generated, stagedPath(first)))};
const component = aggregate && aggregate.component;
if (!component) throw new TypeError(${label} + ' must export default defineAggregate({...})');
export function init() { return component.init(); }
export function decide(state, command) { return component.decide(state, command); }
export function apply(state, events) { return component.apply(state, events); }
`,
  );
  return { entry: generated, modules };
}
