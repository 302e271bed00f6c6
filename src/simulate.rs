//! `koala simulate`: plays Customer.io against a running koala — signed
//! segment webhooks for made-up people — and prints what koala now holds.
//! For trying koala out and for checking a deployment's wiring.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::stream::{self, StreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};

use crate::config::Config;
use crate::customerio::signature::sign;

pub struct Options {
    pub people: usize,
    pub exits: usize,
    pub audience: Option<String>,
    pub url: Option<String>,
}

pub async fn run(config: &Config, opts: Options) -> anyhow::Result<()> {
    let audience = match &opts.audience {
        Some(name) => config
            .audience(name)
            .with_context(|| format!("no audience named {name:?} in the config"))?,
        None => config
            .audiences
            .first()
            .context("the config has no [[audiences]]")?,
    };
    let key = config
        .customerio
        .webhook_signing_keys
        .first()
        .context("customerio.webhook_signing_keys is empty")?
        .expose()
        .to_owned();
    let base = opts.url.clone().unwrap_or_else(|| {
        let a = config.server.listen;
        let host = if a.ip().is_unspecified() {
            "127.0.0.1".to_owned()
        } else {
            a.ip().to_string()
        };
        format!("http://{host}:{}", a.port())
    });
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    http.get(format!("{base}/healthz"))
        .send()
        .await
        .with_context(|| format!("is koala serving at {base}? start it with `koala serve`"))?;

    let now = chrono::Utc::now().timestamp();
    let run_id = format!("{:x}", now);
    let mut events: Vec<Value> = (0..opts.people)
        .map(|i| event(audience.segment_id, &run_id, i, "entered", now))
        .collect();
    events.extend(
        (0..opts.exits.min(opts.people))
            .map(|i| event(audience.segment_id, &run_id, i, "exited", now + 1)),
    );

    let bar = ProgressBar::new(events.len() as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} sending signed webhooks [{bar:30}] {pos}/{len} ({per_sec})",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    let started = Instant::now();
    let url = format!("{base}/webhooks/customerio/segments");
    // Entries first, then exits, as Customer.io would send them.
    let (entries, exits) = events.split_at(opts.people);
    let mut failures = 0usize;
    for batch in [entries, exits] {
        let results: Vec<Result<u16, String>> = stream::iter(batch.iter().map(|body| {
            let http = http.clone();
            let url = url.clone();
            let key = key.clone();
            let bar = bar.clone();
            async move {
                let bytes = serde_json::to_vec(body).map_err(|e| e.to_string())?;
                let ts = chrono::Utc::now().timestamp().to_string();
                let r = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .header("x-cio-timestamp", &ts)
                    .header("x-cio-signature", sign(&key, &ts, &bytes))
                    .body(bytes)
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                bar.inc(1);
                Ok(r.status().as_u16())
            }
        }))
        .buffer_unordered(32)
        .collect()
        .await;
        failures += results.iter().filter(|r| !matches!(r, Ok(200))).count();
    }
    bar.finish_and_clear();
    let elapsed = started.elapsed();
    println!(
        "sent {} webhooks to segment {} in {:.2}s ({:.0}/s), {} not accepted",
        events.len(),
        audience.segment_id,
        elapsed.as_secs_f64(),
        events.len() as f64 / elapsed.as_secs_f64().max(1e-9),
        failures
    );

    let a: Value = http
        .get(format!("{base}/v1/audiences/{}", audience.name))
        .bearer_auth(config.server.admin_token.expose())
        .send()
        .await?
        .json()
        .await?;
    if a.get("error").is_some() {
        bail!("admin API: {}", a["error"]["message"]);
    }
    println!(
        "audience {}: {} members; with email {}, with phone {}, with neither {}",
        audience.name,
        a["members"],
        a["identifier_coverage"]["with_email"],
        a["identifier_coverage"]["with_phone"],
        a["identifier_coverage"]["with_neither"]
    );
    for d in a["destinations"].as_array().into_iter().flatten() {
        println!(
            "  → {}: {} acknowledged, {} adds and {} removes pending, paused: {}",
            d["destination"].as_str().unwrap_or("?"),
            d["acknowledged_members"],
            d["pending_adds"],
            d["pending_removes"],
            d["paused"]
        );
    }
    println!("try: curl -s {base}/v1/people/sim-{run_id}-0 -H 'Authorization: Bearer …'");
    Ok(())
}

/// A body as the README's Liquid template renders it. Every third person
/// has no phone and every tenth no email, so coverage numbers mean something.
fn event(segment: u64, run: &str, i: usize, action: &str, at: i64) -> Value {
    let email = if i % 10 == 9 {
        String::new()
    } else {
        format!("sim-{run}-{i}@example.com")
    };
    let phone = if i % 3 == 2 {
        String::new()
    } else {
        format!("+1415555{:04}", i % 10_000)
    };
    json!({
        "segment_id": segment,
        "action": action,
        "occurred_at": at,
        "identifiers": { "id": format!("sim-{run}-{i}"), "cio_id": "", "email": email, "phone": phone },
        "attributes": { "first_name": "Sim", "plan": if i.is_multiple_of(2) { "gold" } else { "basic" } },
    })
}
