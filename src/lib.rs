//! koala keeps ad-platform and warehouse audiences in step with Customer.io
//! segments: webhooks in, durable ordered membership, batched delivery out.

pub mod app;
pub mod audiences;
pub mod backoff;
pub mod cli;
pub mod config;
pub mod customerio;
pub mod delivery;
pub mod destinations;
pub mod http;
pub mod identity;
pub mod ingest;
pub mod metrics;
pub mod normalization;
pub mod outbound;
pub mod person;
pub mod pruning;
pub mod resync;
pub mod secret;
pub mod simulate;
pub mod store;
