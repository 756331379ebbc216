// __NAME__: an event-sourced aggregate for Aggregate Host.
//
// Build: node __SDK__/build.mjs aggregate.js __NAME__.wasm   (or: aggregate-host build)
// Test:  node --test
//
// A counter to start from: `add {"by": n}` → `added {"by": n}` (n must be positive; refused when
// the counter would pass Number.MAX_SAFE_INTEGER, 2^53 - 1, beyond which a JavaScript number is
// no longer exact), `reset {}` → `reset {}` (refused when the counter is already zero).

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
      // Compared with the room left, which is exact: the sum itself might already be rounded.
      if (by > Number.MAX_SAFE_INTEGER - state.value) {
        throw rejected(`counter would overflow: value ${state.value}, adding ${by}`);
      }
      return [event('added', { by })];
    },
    reset(state) {
      if (state.value === 0) throw rejected('the counter is already zero');
      return [event('reset')];
    },
  },

  apply: {
    added: (state, { by }) => {
      const value = state.value + by;
      // Never fold a rounded value (decide refuses such an `add`; this guards other histories).
      if (!Number.isSafeInteger(value)) throw new Error(`counter would overflow: value ${state.value}, added ${by}`);
      return { ...state, value };
    },
    reset: (state) => ({ ...state, value: 0 }),
  },
});
