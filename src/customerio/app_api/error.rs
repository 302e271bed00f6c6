//! Errors from the App API client. None of them carries the API key, and
//! transport errors drop the URL (customer paths can hold an email).

/// Why an App API call failed, after any retries.
#[derive(Debug, thiserror::Error)]
pub enum AppApiError {
    /// 404: the segment (or customer) does not exist.
    #[error("Customer.io App API: {what} not found")]
    NotFound { what: String },
    /// 401/403: the key is wrong, revoked, or for another workspace. Not retried.
    #[error(
        "Customer.io App API refused the App API key (HTTP {status}); check customerio.app_api_key"
    )]
    Unauthorized { status: u16 },
    /// Any other non-success status; 429 and 5xx only after retries ran out.
    #[error("Customer.io App API {endpoint}: HTTP {status}{}", body_suffix(.body))]
    Status {
        endpoint: &'static str,
        status: u16,
        /// The start of the response body, for diagnosis.
        body: String,
    },
    /// The request did not complete (connect, timeout, broken body), after retries.
    #[error("Customer.io App API {endpoint}: request failed ({})", crate::outbound::TransportFailure::of(.source).describe())]
    Transport {
        endpoint: &'static str,
        #[source]
        source: reqwest::Error,
    },
    /// An identifier no URL path can carry (blank, `.` or `..`); nothing was sent.
    #[error("Customer.io App API: {0}")]
    InvalidIdentifier(&'static str),
    /// A success status with a body koala cannot read.
    #[error("Customer.io App API {endpoint}: unexpected response: {message}")]
    Decode {
        endpoint: &'static str,
        message: String,
    },
}

impl AppApiError {
    /// True for failures that may pass on their own (429, 5xx, network):
    /// a caller may try the whole operation again later.
    pub fn is_transient(&self) -> bool {
        match self {
            AppApiError::Status { status, .. } => {
                crate::outbound::StatusClass::of(*status).is_retryable()
            }
            AppApiError::Transport { .. } => true,
            _ => false,
        }
    }

    /// The HTTP status, when the server answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            AppApiError::NotFound { .. } => Some(404),
            AppApiError::Unauthorized { status } | AppApiError::Status { status, .. } => {
                Some(*status)
            }
            _ => None,
        }
    }
}

fn body_suffix(body: &str) -> String {
    if body.is_empty() {
        String::new()
    } else {
        format!(": {body}")
    }
}
