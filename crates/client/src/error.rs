//! What can go wrong talking to a driftkv (or Cloudflare) KV endpoint.

/// A failed request.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server answered with a Cloudflare error envelope (or at least an error status).
    #[error("{message} (code {code}, HTTP {status})")]
    Api {
        /// HTTP status.
        status: u16,
        /// Cloudflare error code; 0 when the body carried none.
        code: u64,
        /// The server's message.
        message: String,
        /// How long the server asked the client to wait before trying again (`Retry-After`).
        retry_after: Option<std::time::Duration>,
    },
    /// The request never got an answer: connection refused, reset, timed out.
    #[error("cannot reach {url}: {reason}")]
    Transport {
        /// What was being requested.
        url: String,
        /// Why it failed, with its causes.
        reason: String,
        /// The connection could not be made, so the request was certainly not sent.
        connect: bool,
    },
    /// A request kept failing in a retryable way until the retry policy's time ran out.
    #[error("gave up after {attempts} tries in {:.1} s: {last}", elapsed.as_secs_f64())]
    GaveUp {
        /// Tries made, the first included.
        attempts: u32,
        /// Time from the first try to giving up.
        elapsed: std::time::Duration,
        /// The last try's failure.
        last: Box<Error>,
    },
    /// The server answered something that is not the API's shape.
    #[error("unexpected response from {url}: {reason}")]
    Protocol {
        /// What was being requested.
        url: String,
        /// What was wrong with the answer.
        reason: String,
    },
    /// The caller's input cannot be sent (an invalid URL, a bad bulk file).
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    /// Whether trying again later may succeed: rate limiting, server-side failures, and
    /// requests that got no answer.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Api { status, .. } => *status == 429 || *status >= 500,
            Error::Transport { .. } => true,
            Error::GaveUp { .. } | Error::Protocol { .. } | Error::Invalid(_) => false,
        }
    }

    /// Whether the failed request certainly had no effect: refused by the rate limit, or
    /// never sent. Other failures (a timeout, a 5xx) leave it unknown whether it was done.
    pub fn certainly_not_processed(&self) -> bool {
        match self {
            Error::Api { status, .. } => *status == 429,
            Error::Transport { connect, .. } => *connect,
            _ => false,
        }
    }

    /// How long the server asked to wait before trying again.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            Error::Api { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Whether this is the API's "key not found" (404, code 10009).
    pub fn is_key_not_found(&self) -> bool {
        matches!(
            self,
            Error::Api {
                status: 404,
                code: 10009,
                ..
            }
        )
    }

    pub(crate) fn transport(url: &str, error: reqwest::Error) -> Self {
        // reqwest's own message names only the outermost failure (and the URL, given
        // separately here); the cause is what helps.
        let error = error.without_url();
        let connect = error.is_connect();
        let mut reason = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            reason.push_str(": ");
            reason.push_str(&cause.to_string());
            source = cause.source();
        }
        Error::Transport {
            url: url.to_owned(),
            reason,
            connect,
        }
    }
}

/// Results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16, code: u64) -> Error {
        Error::Api {
            status,
            code,
            message: "m".into(),
            retry_after: None,
        }
    }

    #[test]
    fn rate_limits_and_server_errors_are_retryable_client_errors_are_not() {
        assert!(api(429, 10049).is_retryable());
        assert!(api(503, 10050).is_retryable());
        assert!(!api(400, 10001).is_retryable());
        assert!(!api(404, 10009).is_retryable());
        assert!(api(404, 10009).is_key_not_found());
        assert!(!api(404, 10013).is_key_not_found());
    }
}
