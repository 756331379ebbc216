// A bank account aggregate in JavaScript: behaves exactly like the Rust reference
// (example-aggregates/bank-account), as tests/parity/bank-account.yaml checks through the host.
//
// | command    | payload              | event                    |
// | ---------- | -------------------- | ------------------------ |
// | `open`     | `{"owner": "alice"}` | `opened {"owner": ...}`  |
// | `deposit`  | `{"amount": 100}`    | `deposited {"amount"}`   |
// | `withdraw` | `{"amount": 30}`     | `withdrawn {"amount"}`   |
//
// Amounts must be positive, at most MAX_BALANCE, and the owner not blank (`invalid`); opening
// twice, moving money on an account that is not open, withdrawing more than the balance and
// depositing past MAX_BALANCE ("balance would overflow") are `rejected`.
//
// Money never loses precision: every sum on a balance is checked (addToBalance), and apply
// refuses, naming the event, a history that would leave ±MAX_BALANCE (never one this aggregate
// decided).
//
// Build: node guest-sdk/js/build.mjs example-aggregates/bank-account-js/aggregate.js out.wasm

import { defineAggregate, event, invalid, rejected } from '@aggregate-host/sdk';

// Rust's `str::trim` strips Unicode White_Space; JavaScript's `trim` differs on U+0085 (kept) and
// U+FEFF (stripped), so spell the Rust set out.
const BLANK = /^[\t\n\v\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$/;

// The largest balance an account holds, and so the largest amount: 2^53 - 1, the largest integer
// a JavaScript number holds exactly. The Rust, Go and Python accounts share this limit, so all
// four behave the same (tests/parity/bank-account.yaml).
export const MAX_BALANCE = Number.MAX_SAFE_INTEGER;

// `balance + delta`, or null when the sum would leave ±MAX_BALANCE. With both operands safe
// integers the sum is either exact or, past 2^53 - 1, no safe integer: a rounded sum never passes.
export function addToBalance(balance, delta) {
  const sum = balance + delta;
  return Number.isSafeInteger(balance) && Number.isSafeInteger(delta) && Number.isSafeInteger(sum) ? sum : null;
}

// Amounts beyond MAX_BALANCE never get here: the SDK refuses integers beyond
// Number.MAX_SAFE_INTEGER as invalid, naming the field, where the other languages answer
// "amount must be at most 9007199254740991, got ...".
function positive(amount) {
  if (amount <= 0) throw invalid(`amount must be positive, got ${amount}`);
  return amount;
}

function fold(state, delta, what) {
  const balance = addToBalance(state.balance, delta);
  if (balance === null) throw new Error(`balance would overflow: balance ${state.balance}, ${what}`);
  return { ...state, balance };
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
      if (addToBalance(state.balance, amount) === null) {
        throw rejected(
          `balance would overflow: balance ${state.balance}, requested ${amount}, maximum ${MAX_BALANCE}`,
        );
      }
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
    deposited: (state, { amount }) => fold(state, amount, `deposited ${amount}`),
    withdrawn: (state, { amount }) => fold(state, -amount, `withdrawn ${amount}`),
  },
});
