// Node.js module hooks that let `import ... from '@aggregate-host/sdk'` resolve to this SDK
// without an `npm install` in the aggregate's project. `testing.js` and `build.mjs` register
// them (`module.register`); they apply to modules imported afterwards, so a test file imports
// its aggregate with `await import('./aggregate.js')` after importing `testing.js`.

const TARGETS = {
  '@aggregate-host/sdk': new URL('./aggregate.js', import.meta.url).href,
  '@aggregate-host/sdk/testing': new URL('./testing.js', import.meta.url).href,
};

export async function resolve(specifier, context, next) {
  if (Object.hasOwn(TARGETS, specifier)) {
    return { url: TARGETS[specifier], format: 'module', shortCircuit: true };
  }
  return next(specifier, context);
}
