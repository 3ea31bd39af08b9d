//! HTTP integration tests: the real server on an ephemeral loopback port, real SQLite files in a
//! temporary directory, real HTTP. One binary, a module per area of the API.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod helpers;

mod auth;
mod disk_full;
mod errors;
mod fuzz;
mod jobs;
mod limits;
mod metrics;
mod openapi;
mod push;
mod queues;
mod schedules;
mod schemas;
mod ui;
mod workers;
