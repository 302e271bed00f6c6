//! Sends signed webhook requests and classifies the answers: 2xx
//! acknowledges; 429, 408, 5xx and transport failures retry (after
//! `Retry-After` when given); 410 Gone pauses (the receiver says it wants
//! no more); 401/403 pause too (a receiver refusing our signature refuses
//! every row: dead-lettering them all would be wrong); other 4xx are
//! permanent for the batch (the engine splits it to find the bad rows).
//! Reasons carry the status and at most 200 characters of the answer,
//! never the body sent.

use std::time::Duration;

use reqwest::header::CONTENT_TYPE;

use super::request::WebhookRequest;
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

    pub async fn call(&self, req: WebhookRequest) -> Result<(), SendOutcome> {
        let builder = self
            .client
            .post(req.url)
            .header(CONTENT_TYPE, "application/json")
            .header("webhook-id", req.id)
            .header("webhook-timestamp", req.timestamp.to_string())
            .header("webhook-signature", req.signature)
            .body(req.body);
        let answer = crate::outbound::send(builder)
            .await
            .map_err(|e| SendOutcome::transport("webhook", &e))?;
        classify(&answer)
    }
}

pub fn classify(a: &Answer) -> Result<(), SendOutcome> {
    let class = a.class();
    if class == StatusClass::Success {
        return Ok(());
    }
    let reason = a.describe("webhook receiver");
    Err(match a.status {
        410 => SendOutcome::DestinationDown {
            reason: format!(
                "{reason} (410 Gone: the receiver no longer takes these deliveries; fix url, then resume)"
            ),
        },
        _ => SendOutcome::from_status(class, a.retry_after, reason),
    })
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
        assert!(classify(&answer(200, None, "")).is_ok());
        assert!(classify(&answer(204, None, "")).is_ok());
        assert_eq!(
            classify(&answer(429, Some(3), "slow down")),
            Err(SendOutcome::RetryLater {
                after: Some(Duration::from_secs(3)),
                reason: "webhook receiver answered HTTP 429: slow down".into()
            })
        );
        for s in [408, 500, 503] {
            assert_eq!(classify(&answer(s, None, "")).unwrap_err().class(), "retry");
        }
        let Err(SendOutcome::DestinationDown { reason }) = classify(&answer(410, None, "")) else {
            panic!()
        };
        assert!(reason.contains("410 Gone"), "{reason}");
        for s in [401, 403] {
            assert_eq!(
                classify(&answer(s, None, "")).unwrap_err().class(),
                "destination_down"
            );
        }
        for s in [400, 404, 413, 422] {
            assert_eq!(
                classify(&answer(s, None, "bad")).unwrap_err().class(),
                "permanent"
            );
        }
        assert_eq!(
            classify(&answer(302, None, "")).unwrap_err().class(),
            "destination_down"
        );
    }

    #[test]
    fn long_answers_are_cut() {
        let Err(SendOutcome::Permanent { reason }) =
            classify(&answer(400, None, &"x".repeat(5000)))
        else {
            panic!()
        };
        assert!(reason.len() < 300);
    }
}
