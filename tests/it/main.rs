//! One integration-test binary: the real HTTP app on port 0, fakes for
//! every external API, and specifications that read as behaviour.

mod support;

mod ad_platforms;
mod admin;
mod app_api_client;
mod bigquery_delivery;
mod config_and_cli;
mod convergence;
mod crash;
mod delivery;
mod deploy;
mod file_dest_delivery;
mod google_delivery;
mod google_fake_contract;
mod ingest;
mod keep_alive;
mod mapping;
mod meta_fake_contract;
mod openapi;
mod resync;
mod retention;
mod segment_delivery;
mod snowflake_delivery;
mod tiktok_delivery;
mod tiktok_fake_contract;
mod warehouse_pg;
mod webhook_dest_delivery;
