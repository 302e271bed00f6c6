//! One integration-test binary: the real HTTP app on port 0, fakes for
//! every external API, and specifications that read as behaviour.

mod support;

mod admin;
mod config_and_cli;
mod ingest;
mod openapi;
