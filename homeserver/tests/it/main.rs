//! HTTP tests: each boots the real server on an ephemeral loopback port and drives it over
//! HTTP, on SQLite and (when `MYELIN_TEST_POSTGRES_URL` is set) on PostgreSQL.

mod support;

mod auth_rules;
mod authorization;
mod binary;
mod connections;
mod crash;
mod devices;
mod directory;
mod discovery;
mod e2ee;
mod ephemeral;
mod errors;
mod media;
mod openapi;
mod processes;
mod profile;
mod register;
mod restart;
mod rooms;
mod scale_out;
mod sessions;
mod sync;
