//! Sends TikTok requests and classifies the answers. TikTok answers HTTP
//! 200 with a non-zero `code` when it refuses, so the body decides; the
//! code table is UNCONFIRMED and configurable (`retry_codes`,
//! `auth_codes`). Reasons carry TikTok's code and message, never row data.

use std::time::Duration;

use reqwest::header::CONTENT_TYPE;
use serde_json::Value;

use super::request::TiktokRequest;
use crate::destinations::SendOutcome;
use crate::secret::Secret;

/// What a non-zero `code` means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeTable {
    pub retry: Vec<i64>,
    pub auth: Vec<i64>,
}

pub struct Service {
    client: reqwest::Client,
    token: Secret,
    codes: CodeTable,
}

impl Service {
    pub fn new(timeout: Duration, token: Secret, codes: CodeTable) -> anyhow::Result<Self> {
        let client = crate::outbound::client(timeout)?;
        Ok(Service {
            client,
            token,
            codes,
        })
    }

    /// Sends; the answer's `data` on code 0.
    pub async fn call(&self, req: TiktokRequest) -> Result<Value, SendOutcome> {
        let request = self
            .client
            .post(req.url)
            .header("Access-Token", self.token.expose())
            .header(CONTENT_TYPE, "application/json")
            .body(req.body);
        let a = crate::outbound::send(request)
            .await
            .map_err(|e| SendOutcome::transport("tiktok", &e))?;
        classify(a.status, a.retry_after, &a.body, &self.codes)
    }
}

/// Code 0 is success whatever else the body says; a non-zero code is
/// classified by the table; without a code the HTTP status decides.
pub fn classify(
    status: u16,
    after: Option<Duration>,
    body: &[u8],
    codes: &CodeTable,
) -> Result<Value, SendOutcome> {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let code = v["code"].as_i64();
    let message: String = v["message"]
        .as_str()
        .unwrap_or_default()
        .chars()
        .take(300)
        .collect();
    match code {
        Some(0) if (200..300).contains(&status) => Ok(v["data"].clone()),
        Some(code) => {
            let reason = if message.is_empty() {
                format!("tiktok code {code} (HTTP {status})")
            } else {
                format!("tiktok code {code} (HTTP {status}): {message}")
            };
            Err(by_code(code, after, reason, codes))
        }
        None => {
            let reason = format!("tiktok answered HTTP {status} without a code");
            Err(match status {
                200..=299 => SendOutcome::RetryLater { after, reason },
                408 | 429 | 500..=599 => SendOutcome::RetryLater { after, reason },
                401 | 403 => SendOutcome::DestinationDown { reason },
                404 | 405 => SendOutcome::DestinationDown {
                    reason: format!("{reason}: check base_url"),
                },
                400..=499 => SendOutcome::Permanent { reason },
                _ => SendOutcome::DestinationDown { reason },
            })
        }
    }
}

/// The table: throttles and 5xxxx system errors retry, auth codes pause,
/// anything else (40002 invalid data, unknown codes) is permanent for the
/// batch — the engine splits it to find the bad rows.
fn by_code(code: i64, after: Option<Duration>, reason: String, codes: &CodeTable) -> SendOutcome {
    if codes.retry.contains(&code) || (50000..60000).contains(&code) {
        SendOutcome::RetryLater { after, reason }
    } else if codes.auth.contains(&code) {
        SendOutcome::DestinationDown { reason }
    } else {
        SendOutcome::Permanent { reason }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> CodeTable {
        CodeTable {
            retry: vec![40100],
            auth: vec![40001, 40105],
        }
    }

    fn class(status: u16, body: &str) -> &'static str {
        match classify(status, None, body.as_bytes(), &table()) {
            Ok(_) => "success",
            Err(o) => o.class(),
        }
    }

    #[test]
    fn http_200_with_a_code_is_classified_by_the_code() {
        assert_eq!(
            class(200, r#"{"code":0,"message":"OK","data":{}}"#),
            "success"
        );
        assert_eq!(
            class(200, r#"{"code":40100,"message":"Too many requests"}"#),
            "retry"
        );
        assert_eq!(
            class(
                200,
                r#"{"code":40105,"message":"Access token is incorrect or has been revoked."}"#
            ),
            "destination_down"
        );
        assert_eq!(
            class(200, r#"{"code":40001,"message":"No permission"}"#),
            "destination_down"
        );
        assert_eq!(
            class(200, r#"{"code":40002,"message":"Invalid parameters"}"#),
            "permanent"
        );
        assert_eq!(
            class(200, r#"{"code":51000,"message":"System error"}"#),
            "retry"
        );
        assert_eq!(class(200, r#"{"code":40999}"#), "permanent");
    }

    #[test]
    fn unknown_codes_name_the_code() {
        let Err(SendOutcome::Permanent { reason }) =
            classify(200, None, br#"{"code":41234,"message":"odd"}"#, &table())
        else {
            panic!()
        };
        assert_eq!(reason, "tiktok code 41234 (HTTP 200): odd");
    }

    #[test]
    fn without_a_code_the_status_decides() {
        assert_eq!(class(503, "busy"), "retry");
        assert_eq!(class(429, ""), "retry");
        assert_eq!(class(401, ""), "destination_down");
        assert_eq!(class(404, ""), "destination_down");
        assert_eq!(class(400, "bad"), "permanent");
        assert_eq!(class(200, "not json"), "retry");
    }

    #[test]
    fn the_table_is_configurable() {
        let t = CodeTable {
            retry: vec![40002],
            auth: vec![],
        };
        assert!(matches!(
            classify(200, None, br#"{"code":40002}"#, &t),
            Err(SendOutcome::RetryLater { .. })
        ));
        assert!(matches!(
            classify(200, None, br#"{"code":40105}"#, &t),
            Err(SendOutcome::Permanent { .. })
        ));
    }
}
