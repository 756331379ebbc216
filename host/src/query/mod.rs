//! Queries over the current state of a tenant's aggregates.

pub mod filter;
pub mod index;
