//! Data Manager processes ingests and removes asynchronously: a 200 only
//! means the request was accepted. Each answer's `requestId` is recorded
//! here (in memory, bounded: a restart forgets the ids not yet checked),
//! and a background task asks `requestStatus:retrieve` about them
//! (<https://developers.google.com/data-manager/api/devguides/diagnostics>),
//! counting outcomes in `koala_google_request_status_total{destination,status}`
//! and keeping the last errors for the admin API. Sending never waits on it.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::audiences::SyncOp;

/// How many errors are kept for the admin API.
pub const KEPT_NOTES: usize = 10;
/// A request still PROCESSING after this long is given up on.
const MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// Checks per round, so a backlog never floods the read quota.
const PER_ROUND: usize = 50;

#[derive(Debug, Clone)]
pub struct Tracked {
    pub request_id: String,
    pub op: SyncOp,
    pub rows: usize,
    pub recorded: Instant,
}

/// What a requestStatus answer says about a request, over all its
/// destinations (koala sends one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Processing,
    Success,
    /// PARTIAL_SUCCESS or FAILED, with a summary of `errorInfo`.
    Failed {
        status: &'static str,
        summary: String,
    },
    Unknown,
}

impl Verdict {
    pub fn label(&self) -> &'static str {
        match self {
            Verdict::Processing => "processing",
            Verdict::Success => "success",
            Verdict::Failed { status, .. } => status,
            Verdict::Unknown => "unknown",
        }
    }
}

/// Reads `{"requestStatusPerDestination": [{requestStatus, errorInfo:
/// {errorCounts: [{recordCount, reason}]}}]}`. Any destination still
/// processing keeps the request pending; otherwise the worst wins.
pub fn verdict(body: &Value) -> Verdict {
    let per = body["requestStatusPerDestination"].as_array();
    let Some(per) = per.filter(|p| !p.is_empty()) else {
        return Verdict::Unknown;
    };
    let mut worst = Verdict::Success;
    for d in per {
        let status = d["requestStatus"]
            .as_str()
            .unwrap_or("REQUEST_STATUS_UNKNOWN");
        let failed = match status {
            "PROCESSING" => return Verdict::Processing,
            "SUCCESS" => None,
            "FAILED" => Some("failed"),
            "PARTIAL_SUCCESS" => Some("partial_success"),
            _ => {
                if worst == Verdict::Success {
                    worst = Verdict::Unknown;
                }
                None
            }
        };
        if let Some(label) = failed {
            let counts: Vec<String> = d["errorInfo"]["errorCounts"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| {
                    let n = match &c["recordCount"] {
                        Value::String(s) => s.clone(),
                        Value::Number(n) => n.to_string(),
                        _ => "?".into(),
                    };
                    let reason = c["reason"].as_str().unwrap_or("UNSPECIFIED");
                    format!("{n}× {reason}")
                })
                .collect();
            let summary = if counts.is_empty() {
                "no error counts given".to_owned()
            } else {
                counts.join(", ")
            };
            if !matches!(
                worst,
                Verdict::Failed {
                    status: "failed",
                    ..
                }
            ) {
                worst = Verdict::Failed {
                    status: label,
                    summary,
                };
            }
        }
    }
    worst
}

/// Request ids waiting for a check, and the last errors seen.
pub struct Tracker {
    max: usize,
    pending: Mutex<VecDeque<Tracked>>,
    notes: Mutex<VecDeque<String>>,
}

impl Tracker {
    pub fn new(max: usize) -> Self {
        Tracker {
            max: max.max(1),
            pending: Mutex::new(VecDeque::new()),
            notes: Mutex::new(VecDeque::new()),
        }
    }

    /// Records a request to check; beyond `max` the oldest is dropped (and
    /// returned so it can be counted).
    pub fn record(&self, t: Tracked) -> Option<Tracked> {
        let mut p = self.pending.lock().expect("tracker lock");
        p.push_back(t);
        (p.len() > self.max).then(|| p.pop_front()).flatten()
    }

    /// The requests to check this round (oldest first).
    pub fn due(&self) -> Vec<Tracked> {
        let p = self.pending.lock().expect("tracker lock");
        p.iter().take(PER_ROUND).cloned().collect()
    }

    /// Forgets a request that has its verdict (or is too old).
    pub fn done(&self, request_id: &str) {
        self.pending
            .lock()
            .expect("tracker lock")
            .retain(|t| t.request_id != request_id);
    }

    pub fn too_old(t: &Tracked) -> bool {
        t.recorded.elapsed() > MAX_AGE
    }

    pub fn note(&self, note: String) {
        let mut n = self.notes.lock().expect("notes lock");
        n.push_back(note);
        while n.len() > KEPT_NOTES {
            n.pop_front();
        }
    }

    /// The last errors, newest last.
    pub fn notes(&self) -> Vec<String> {
        self.notes
            .lock()
            .expect("notes lock")
            .iter()
            .cloned()
            .collect()
    }

    pub fn pending(&self) -> usize {
        self.pending.lock().expect("tracker lock").len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tracked(id: &str) -> Tracked {
        Tracked {
            request_id: id.into(),
            op: SyncOp::Add,
            rows: 1,
            recorded: Instant::now(),
        }
    }

    #[test]
    fn verdicts_follow_the_request_status() {
        assert_eq!(
            verdict(&json!({"requestStatusPerDestination": [{"requestStatus": "SUCCESS"}]})),
            Verdict::Success
        );
        assert_eq!(
            verdict(&json!({"requestStatusPerDestination": [{"requestStatus": "PROCESSING"}]})),
            Verdict::Processing
        );
        assert_eq!(verdict(&json!({})), Verdict::Unknown);
        assert_eq!(
            verdict(
                &json!({"requestStatusPerDestination": [{"requestStatus": "FAILED",
                "errorInfo": {"errorCounts": [{"recordCount": "3", "reason": "PROCESSING_ERROR_REASON_INVALID_HASH"}]}}]})
            ),
            Verdict::Failed {
                status: "failed",
                summary: "3× PROCESSING_ERROR_REASON_INVALID_HASH".into()
            }
        );
        assert_eq!(
            verdict(
                &json!({"requestStatusPerDestination": [{"requestStatus": "PARTIAL_SUCCESS"}]})
            )
            .label(),
            "partial_success"
        );
    }

    #[test]
    fn the_tracker_is_bounded_and_keeps_the_last_notes() {
        let t = Tracker::new(2);
        assert!(t.record(tracked("a")).is_none());
        assert!(t.record(tracked("b")).is_none());
        assert_eq!(t.record(tracked("c")).unwrap().request_id, "a");
        assert_eq!(t.due().len(), 2);
        t.done("b");
        assert_eq!(t.due()[0].request_id, "c");
        for i in 0..15 {
            t.note(format!("n{i}"));
        }
        let notes = t.notes();
        assert_eq!(notes.len(), KEPT_NOTES);
        assert_eq!(notes.last().unwrap(), "n14");
    }
}
