pub mod app;
pub mod fake_app_api;
pub mod fake_google;
pub mod fake_meta;
pub mod fake_segment;
pub mod fake_tiktok;
pub mod fake_webhook_receiver;
pub mod wait;
