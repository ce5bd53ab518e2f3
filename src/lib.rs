//! Kiln: a self-hosted CI/CD build service that speaks the Cloudflare Workers Builds REST API.

pub mod api;
pub mod cache;
pub mod cli;
pub mod crypto;
pub mod dashboard;
pub mod disk;
pub mod domain;
pub mod events;
pub mod git;
pub mod github;
pub mod listen;
pub mod logs;
pub mod metrics;
pub mod nodes;
pub mod notify;
pub mod runner;
pub mod sandbox;
pub mod scheduler;
pub mod startup;
pub mod store;
pub mod toolchain;
pub mod untrusted;
