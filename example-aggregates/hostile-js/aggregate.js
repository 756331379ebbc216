// A misbehaving JavaScript aggregate for the host's sandboxing tests (host/tests/polyglot.rs).
//
// | command | payload         | behaviour                                                        |
// | ------- | --------------- | ---------------------------------------------------------------- |
// | `ok`    | `{}`            | one event `done` `{}`                                            |
// | `spin`  | `{}`            | loops forever (fuel / epoch deadline)                            |
// | `hog`   | `{}`            | allocates 1 MiB arrays forever and keeps them (memory limit);    |
// |         |                 | SpiderMonkey turns the refused growth into an "out of memory"    |
// |         |                 | exception, which the SDK lets through, so the call traps         |
// | `throw` | `{}`            | throws a plain `Error` (a bug, not a refusal): the call traps    |
// | `echo`  | `{"size": n}`   | one event `echoed` `{"data": "xxx…"}` whose string is n bytes    |
//
// State: `{}` (init), unchanged by `done` and `echoed`; any other event type makes `apply` fail.
//
// Cost of `echo` (measured): componentize-js lowers every returned string with a per-character
// loop in the interpreted guest, 2,000–4,000 fuel per byte (a 1 MB echo needs 2–4·10^9), and
// SpiderMonkey's JSON.stringify reserves ~60 bytes of guest memory per character of a long
// string (1 MB grows memory by ~65 MiB). Test output limits with small sizes and a lowered
// `max_output_bytes`.
//
// Build: node guest-sdk/js/build.mjs example-aggregates/hostile-js/aggregate.js out.wasm

import { defineAggregate, event, invalid } from '@aggregate-host/sdk';

// Survives the call: what `hog` allocated stays allocated for the instance's lifetime.
const hoard = [];

export default defineAggregate({
  init: () => ({}),

  commands: {
    ok: {},
    spin: {},
    hog: {},
    throw: {},
    echo: { size: 'integer' },
  },

  decide: {
    ok: () => [event('done')],
    spin() {
      for (;;) {
        // Deliberately empty: only fuel or the deadline stops this.
      }
    },
    hog() {
      for (;;) hoard.push(new Uint8Array(1 << 20).fill(1));
    },
    throw() {
      throw new Error('hostile guest throws on purpose');
    },
    echo(state, { size }) {
      if (size < 0) throw invalid(`size must not be negative, got ${size}`);
      return [event('echoed', { data: 'x'.repeat(size) })];
    },
  },

  apply: {
    done: (state) => state,
    echoed: (state) => state,
  },
});
