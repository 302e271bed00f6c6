//! `koala simulate`: plays Customer.io against a running koala — signed
//! segment webhooks for made-up people — and prints what koala now holds.
//! For trying koala out and for checking a deployment's wiring.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::stream::{self, StreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};

use crate::config::{Config, DestinationConfig};
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
    for entry in file_destinations(config, &audience.name) {
        wait_until_delivered(&http, &base, config, &audience.name, &entry.0).await;
        print_members_file(&entry.1, &audience.name);
    }
    println!("try: curl -s {base}/v1/people/sim-{run_id}-0 -H 'Authorization: Bearer …'");
    Ok(())
}

/// The `file` destinations `audience` syncs to: (name, directory).
fn file_destinations(config: &Config, audience: &str) -> Vec<(String, String)> {
    let Some(a) = config.audience(audience) else {
        return Vec::new();
    };
    a.sync
        .iter()
        .filter_map(|s| {
            let d = config
                .destinations
                .iter()
                .find(|d| d.name == s.destination)?;
            match &d.platform {
                DestinationConfig::File(f) => Some((d.name.clone(), f.directory.clone())),
                _ => None,
            }
        })
        .collect()
}

/// Waits (at most 15 s) until nothing is pending for `destination`.
async fn wait_until_delivered(
    http: &reqwest::Client,
    base: &str,
    config: &Config,
    audience: &str,
    destination: &str,
) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        let a: Option<Value> = match http
            .get(format!("{base}/v1/audiences/{audience}"))
            .bearer_auth(config.server.admin_token.expose())
            .send()
            .await
        {
            Ok(r) => r.json().await.ok(),
            Err(_) => None,
        };
        let done = a.as_ref().is_some_and(|a| {
            a["destinations"].as_array().into_iter().flatten().any(|d| {
                d["destination"] == destination
                    && d["pending_adds"] == 0
                    && d["pending_removes"] == 0
                    && d["in_flight"].as_i64().unwrap_or(0) == 0
            })
        });
        if done {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What the file destination holds: the count and a few masked examples.
fn print_members_file(directory: &str, audience: &str) {
    let path = std::path::Path::new(directory).join(format!(
        "{}.members.json",
        crate::destinations::file::config::file_stem(audience)
    ));
    let doc: Value = match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        Err(e) => {
            println!("  ⇒ {}: not readable yet ({e})", path.display());
            return;
        }
    };
    let members = doc["members"].as_array().cloned().unwrap_or_default();
    println!("  ⇒ {} holds {} members", path.display(), members.len());
    for m in members.iter().take(3) {
        println!(
            "      {} email {} phone {}",
            m["id"].as_str().or(m["cio_id"].as_str()).unwrap_or("?"),
            m["email"]
                .as_str()
                .map(mask_email)
                .unwrap_or_else(|| "-".into()),
            m["phone"]
                .as_str()
                .map(mask_phone)
                .unwrap_or_else(|| "-".into()),
        );
    }
}

/// `s***@example.com`.
fn mask_email(e: &str) -> String {
    match e.split_once('@') {
        Some((local, domain)) => {
            let first: String = local.chars().take(1).collect();
            format!("{first}***@{domain}")
        }
        None => "***".into(),
    }
}

/// `***0100`.
fn mask_phone(p: &str) -> String {
    let tail: String = p
        .chars()
        .rev()
        .take(4)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("***{tail}")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn examples_are_masked() {
        assert_eq!(mask_email("sim-1-0@example.com"), "s***@example.com");
        assert_eq!(mask_email("nope"), "***");
        assert_eq!(mask_phone("+14155550100"), "***0100");
    }
}
