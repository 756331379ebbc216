// A bank account aggregate in JavaScript: behaves exactly like the Rust reference
// (example-aggregates/bank-account), as tests/parity/bank-account.yaml checks through the host.
//
// | command    | payload              | event                    |
// | ---------- | -------------------- | ------------------------ |
// | `open`     | `{"owner": "alice"}` | `opened {"owner": ...}`  |
// | `deposit`  | `{"amount": 100}`    | `deposited {"amount"}`   |
// | `withdraw` | `{"amount": 30}`     | `withdrawn {"amount"}`   |
//
// Amounts must be positive and the owner not blank (`invalid`); opening twice, moving money on an
// account that is not open, and withdrawing more than the balance are `rejected`.
//
// Build: node guest-sdk/js/build.mjs example-aggregates/bank-account-js/aggregate.js out.wasm

import { defineAggregate, event, invalid, rejected } from '@aggregate-host/sdk';

// Rust's `str::trim` strips Unicode White_Space; JavaScript's `trim` differs on U+0085 (kept) and
// U+FEFF (stripped), so spell the Rust set out.
const BLANK = /^[\t\n\v\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$/;

function positive(amount) {
  if (amount <= 0) throw invalid(`amount must be positive, got ${amount}`);
  return amount;
}

function requireOpen(state) {
  if (!state.opened) throw rejected('account is not open');
}

export default defineAggregate({
  init: () => ({ opened: false, owner: '', balance: 0 }),

  commands: {
    open: { owner: 'string' },
    deposit: { amount: 'integer' },
    withdraw: { amount: 'integer' },
  },

  decide: {
    open(state, { owner }) {
      if (BLANK.test(owner)) throw invalid('owner must not be empty');
      if (state.opened) throw rejected(`account is already open (owner ${state.owner})`);
      return [event('opened', { owner })];
    },
    deposit(state, { amount }) {
      positive(amount);
      requireOpen(state);
      return [event('deposited', { amount })];
    },
    withdraw(state, { amount }) {
      positive(amount);
      requireOpen(state);
      if (amount > state.balance) {
        throw rejected(`insufficient funds: balance ${state.balance}, requested ${amount}`);
      }
      return [event('withdrawn', { amount })];
    },
  },

  apply: {
    opened: (state, { owner }) => ({ ...state, opened: true, owner }),
    deposited: (state, { amount }) => ({ ...state, balance: state.balance + amount }),
    withdrawn: (state, { amount }) => ({ ...state, balance: state.balance - amount }),
  },
});
