//! `koala resync`: asks the running koala to resync an audience and follows
//! the job with a progress bar, then prints a summary.

use std::time::Duration;

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

use crate::config::Config;

/// Returns whether the job finished successfully.
pub async fn run(
    config: &Config,
    audience: &str,
    dry_run: bool,
    replace: &[String],
    url: Option<String>,
) -> anyhow::Result<bool> {
    let base = url.unwrap_or_else(|| config.local_base_url());
    let base = base.trim_end_matches('/').to_owned();
    let token = config.server.admin_token.expose().to_owned();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let mut query = vec![("dry_run", dry_run.to_string())];
    if !replace.is_empty() {
        query.push(("replace", replace.join(",")));
    }
    let start = http
        .post(format!("{base}/v1/audiences/{audience}/resync"))
        .query(&query)
        .bearer_auth(&token)
        .send()
        .await
        .with_context(|| format!("is koala serving at {base}?"))?;
    let status = start.status();
    let job: Value = start.json().await.context("reading koala's answer")?;
    if !status.is_success() {
        bail!(
            "{}",
            job["error"]["message"].as_str().unwrap_or("resync refused")
        );
    }
    if job["already_running"] == true {
        let replacing: Vec<&str> = job["replace"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if let Some(missing) = replace.iter().find(|d| !replacing.contains(&d.as_str())) {
            bail!(
                "a resync of {audience} is already running without replacing {missing}; \
                 run this again when it has finished"
            );
        }
        eprintln!("a resync of {audience} is already running; following it");
    }
    let id = job["id"]
        .as_str()
        .context("no job id in koala's answer")?
        .to_owned();

    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {msg:<40} [{bar:30}] {pos}/{len} members ({elapsed})",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    let job = loop {
        let job: Value = http
            .get(format!("{base}/v1/resyncs/{id}"))
            .bearer_auth(&token)
            .send()
            .await?
            .json()
            .await?;
        if let Some(n) = job["expected_members"].as_u64() {
            bar.set_length(n);
        }
        bar.set_position(job["members_seen"].as_u64().unwrap_or(0));
        if job["phase"] == "replacing" {
            let sent: u64 = job["replaced"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| r["rows"].as_u64())
                .sum();
            bar.set_message(format!("replacing · {sent} sent"));
        } else {
            bar.set_message(format!(
                "{} · page {} · +{} −{}",
                job["phase"].as_str().unwrap_or("?"),
                job["pages_fetched"],
                job["entered"],
                job["exited"]
            ));
        }
        if matches!(job["phase"].as_str(), Some("done" | "failed")) {
            break job;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    bar.finish_and_clear();
    print_summary(audience, &job);
    Ok(job["phase"] == "done")
}

fn print_summary(audience: &str, job: &Value) {
    let would = if job["dry_run"] == true {
        " (dry run: nothing changed)"
    } else {
        ""
    };
    println!(
        "resync {} of {audience}: {}{would}",
        job["id"].as_str().unwrap_or("?"),
        job["phase"].as_str().unwrap_or("?")
    );
    println!("  pages fetched   {}", job["pages_fetched"]);
    println!(
        "  members seen    {} (skipped without identifier: {})",
        job["members_seen"], job["members_skipped"]
    );
    println!("  entered         {}", job["entered"]);
    println!("  exited          {}", job["exited"]);
    println!("  unchanged       {}", job["unchanged"]);
    println!("  stale           {} (newer webhooks won)", job["stale"]);
    println!("  new people      {}", job["new_people"]);
    let lookups = &job["lookups"];
    if lookups["queued"].as_u64().unwrap_or(0) > 0 {
        println!(
            "  looked up       {} of {} in {} bulk requests ({} changed)",
            lookups["found"], lookups["queued"], lookups["requests"], lookups["changed"]
        );
        let reasons = &lookups["not_looked_up"];
        let not: Vec<String> = reasons
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(_, n)| n.as_u64().unwrap_or(0) > 0)
            .map(|(reason, n)| format!("{n} {reason}"))
            .collect();
        if !not.is_empty() {
            println!("  NOT looked up   {}", not.join(", "));
        }
    }
    for (label, key) in [
        ("would enter", "sample_entered"),
        ("would exit", "sample_exited"),
    ] {
        if let Some(sample) = job[key].as_array().filter(|s| !s.is_empty()) {
            let items: Vec<_> = sample.iter().filter_map(Value::as_str).collect();
            println!("  e.g. {label}: {}", items.join(", "));
        }
    }
    if let Some(dests) = job["destinations"].as_array() {
        for d in dests {
            println!(
                "  destination {}: {} adds and {} removes pending, {} acknowledged members",
                d["destination"].as_str().unwrap_or("?"),
                d["pending_adds"],
                d["pending_removes"],
                d["acknowledged_members"]
            );
        }
    }
    for r in job["replaced"].as_array().into_iter().flatten() {
        let state = if r["done"] == true {
            "replaced"
        } else {
            "NOT replaced"
        };
        println!(
            "  replace {}: {state}: {} people in {} batches ({} retried, {} without an identifier)",
            r["destination"].as_str().unwrap_or("?"),
            r["rows"],
            r["batches"],
            r["retries"],
            r["unaddressable"]
        );
        if let Some(note) = r["note"].as_str() {
            println!("    {note}");
        }
    }
    if let Some(e) = job["error"].as_str() {
        println!("  error: {e}");
    }
}
