//! The workspace's end-to-end tests in one binary: real engines, gateways, slapd and
//! PostgreSQL per test. One binary instead of one per file keeps a cold build's link
//! time and the target directory's size down.

mod common;

mod audit_trail;
mod cli;
mod cli_gateway;
mod demo;
mod demo_cli;
mod directory_sync;
mod engine_grpc;
mod gateway_decide;
mod gateway_logon;
mod import;
mod sim_load;
