//! End-to-end tests: the real binary, real TLS, a real HTTP client, and
//! SQLite or PostgreSQL (`LEARNTRAC_DATABASE_URL`). One test binary keeps
//! link time down.
#![allow(clippy::expect_used, clippy::panic)]

mod access;
mod browser;
mod database;
mod gateway;
mod harness;
mod identity;
mod input;
mod learning;
mod library;
mod observability;
mod operations;
