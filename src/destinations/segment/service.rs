//! Sends `/v1/batch` requests and classifies the answers: 200 acknowledges;
//! 400 (too large, invalid JSON; RudderStack also a bad write key) refuses
//! the batch (the engine splits it to find the bad rows); 401/403 pause (a
//! refused write key refuses every row); 429, 5xx and transport failures
//! retry, after `Retry-After` when given. Reasons carry the status and at
//! most 200 characters of the answer, never the body sent or the key.

use std::time::Duration;

use reqwest::header::CONTENT_TYPE;

use super::request::BatchRequest;
use crate::destinations::SendOutcome;
use crate::outbound::{Answer, StatusClass};

pub struct Service {
    client: reqwest::Client,
}

impl Service {
    pub fn new(timeout: Duration) -> anyhow::Result<Self> {
        Ok(Service {
            client: crate::outbound::client(timeout)?,
        })
    }

    pub async fn call(&self, req: BatchRequest) -> Result<(), SendOutcome> {
        let builder = self
            .client
            .post(req.url)
            .header(CONTENT_TYPE, "application/json")
            .header(req.auth_header, req.auth_value.expose())
            .body(req.body);
        let answer = crate::outbound::send(builder)
            .await
            .map_err(|e| SendOutcome::transport("segment", &e))?;
        classify(&answer)
    }
}

pub fn classify(a: &Answer) -> Result<(), SendOutcome> {
    let class = a.class();
    if class == StatusClass::Success {
        return Ok(());
    }
    let mut reason = a.describe("segment");
    if class == StatusClass::Unauthorized {
        reason.push_str(" (the write key was refused: fix write_key or auth, then resume)");
    }
    Err(SendOutcome::from_status(class, a.retry_after, reason))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, after: Option<u64>, body: &str) -> Answer {
        Answer {
            status,
            retry_after: after.map(Duration::from_secs),
            body: bytes::Bytes::from(body.to_owned()),
        }
    }

    #[test]
    fn answers_fall_into_outcomes() {
        assert!(classify(&answer(200, None, "{\"success\":true}")).is_ok());
        assert_eq!(
            classify(&answer(429, Some(3), "")),
            Err(SendOutcome::RetryLater {
                after: Some(Duration::from_secs(3)),
                reason: "segment answered HTTP 429".into()
            })
        );
        for s in [500, 502, 503] {
            assert_eq!(classify(&answer(s, None, "")).unwrap_err().class(), "retry");
        }
        for s in [401, 403] {
            let Err(SendOutcome::DestinationDown { reason }) = classify(&answer(s, None, ""))
            else {
                panic!()
            };
            assert!(reason.contains("write key was refused"), "{reason}");
        }
        let Err(SendOutcome::Permanent { reason }) =
            classify(&answer(400, None, &"x".repeat(5000)))
        else {
            panic!()
        };
        assert!(reason.starts_with("segment answered HTTP 400") && reason.len() < 300);
    }
}
