//! Kiln: a self-hosted CI/CD build service that speaks the Cloudflare Workers Builds REST API.

pub mod api;
pub mod cli;
pub mod crypto;
pub mod domain;
pub mod startup;
pub mod store;
