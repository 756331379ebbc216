// __NAME__: an event-sourced aggregate for Aggregate Host.
//
// Build: node __SDK__/build.mjs aggregate.js __NAME__.wasm   (or: aggregate-host build)
// Test:  node --test
//
// A counter to start from: `add {"by": n}` → `added {"by": n}` (n must be positive),
// `reset {}` → `reset {}` (refused when the counter is already zero).

import { defineAggregate, event, invalid, rejected } from '@aggregate-host/sdk';

export default defineAggregate({
  init: () => ({ value: 0 }),

  // Checked before decide: unknown command types, missing fields and wrong types are `invalid`.
  commands: {
    add: { by: 'integer' },
    reset: {},
  },

  decide: {
    add(state, { by }) {
      if (by <= 0) throw invalid(`by must be positive, got ${by}`);
      return [event('added', { by })];
    },
    reset(state) {
      if (state.value === 0) throw rejected('the counter is already zero');
      return [event('reset')];
    },
  },

  apply: {
    added: (state, { by }) => ({ ...state, value: state.value + by }),
    reset: (state) => ({ ...state, value: 0 }),
  },
});
