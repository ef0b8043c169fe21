//! Sync plumbing shared by `/sync` and pagination: stream tokens and event filters.

pub mod filter;
pub mod token;
