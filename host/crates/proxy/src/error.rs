//! The responses the proxy makes itself. Each names who failed (the client, the routing,
//! or which upstream) and carries `x-orca-error: 1`, so operators can tell them apart from
//! the application's own errors.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};

use crate::forward::ProxyBody;

/// The header that marks a response as made by the proxy, not by the application.
pub static X_ORCA_ERROR: HeaderName = HeaderName::from_static("x-orca-error");

/// Why the proxy answered a request itself instead of forwarding the backend's response.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// The request names no host (HTTP/1.0 without `Host`). 400.
    #[error("request has no Host header")]
    MissingHost,
    /// The request has more than one `Host` header (RFC 9112 §3.2: a 400). 400.
    #[error("request has more than one Host header")]
    DuplicateHost,
    /// No service has this domain. 404.
    #[error("no service is routed for host \"{host}\"")]
    UnknownHost {
        /// The normalized host the client asked for.
        host: String,
    },
    /// An ACME HTTP-01 challenge path with a token that is not pending. 404.
    #[error("no pending ACME challenge for this token")]
    UnknownChallenge,
    /// The client stalled while sending its request body. 408.
    #[error("the client sent no request body data for {timeout:?}")]
    ClientBodyTimeout {
        /// The configured `body_read_timeout`.
        timeout: Duration,
    },
    /// The client had not finished sending its request body when the response-head
    /// deadline passed. 408.
    #[error("the client did not finish sending its request body within {timeout:?}")]
    ClientBodyIncomplete {
        /// The configured `request_timeout`.
        timeout: Duration,
    },
    /// The service exists but has no ready replica. 503.
    #[error("service \"{service}\" has no ready replica")]
    NoReadyReplica {
        /// The service, `"project/name"`.
        service: String,
    },
    /// The request body is larger than `max_request_body`. 413.
    #[error("request body exceeds the limit of {limit} bytes")]
    BodyTooLarge {
        /// The configured limit in bytes.
        limit: u64,
    },
    /// The upstream could not be reached or failed before answering. 502.
    #[error("upstream {addr} for \"{service}\" failed: {reason}")]
    UpstreamFailed {
        /// The backend address.
        addr: SocketAddr,
        /// The service, `"project/name"`.
        service: String,
        /// The error chain, outermost first.
        reason: String,
    },
    /// The upstream did not send a response head in time. 504.
    #[error("upstream {addr} for \"{service}\" did not answer within {timeout:?}")]
    UpstreamTimeout {
        /// The backend address.
        addr: SocketAddr,
        /// The service, `"project/name"`.
        service: String,
        /// The configured `request_timeout`.
        timeout: Duration,
    },
}

impl ProxyError {
    /// The status code the client receives.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::MissingHost | ProxyError::DuplicateHost => StatusCode::BAD_REQUEST,
            ProxyError::UnknownHost { .. } => StatusCode::NOT_FOUND,
            ProxyError::UnknownChallenge => StatusCode::NOT_FOUND,
            ProxyError::ClientBodyTimeout { .. } | ProxyError::ClientBodyIncomplete { .. } => {
                StatusCode::REQUEST_TIMEOUT
            }
            ProxyError::NoReadyReplica { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::UpstreamFailed { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// Whether the upstream (not the client or the routing) is at fault.
    pub(crate) fn upstream_kind(&self) -> Option<&'static str> {
        match self {
            ProxyError::UpstreamFailed { .. } => Some("failed"),
            ProxyError::UpstreamTimeout { .. } => Some("timeout"),
            _ => None,
        }
    }

    /// A short plain-text response naming the problem.
    pub(crate) fn into_response(self) -> Response<ProxyBody> {
        let body = Full::new(Bytes::from(format!("{self}\n")))
            .map_err(|never| match never {})
            .boxed_unsync();
        let mut response = Response::new(body);
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        headers.insert(&X_ORCA_ERROR, HeaderValue::from_static("1"));
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_culprit() {
        let e = ProxyError::UnknownHost { host: "x".into() };
        assert_eq!(e.to_string(), "no service is routed for host \"x\"");
        let e = ProxyError::NoReadyReplica {
            service: "demo/web".into(),
        };
        assert_eq!(e.to_string(), "service \"demo/web\" has no ready replica");
        let e = ProxyError::UpstreamFailed {
            addr: "127.0.0.1:1".parse().unwrap(),
            service: "demo/web".into(),
            reason: "connection refused".into(),
        };
        assert_eq!(
            e.to_string(),
            "upstream 127.0.0.1:1 for \"demo/web\" failed: connection refused"
        );
        let response = e.into_response();
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(response.headers()[&X_ORCA_ERROR], "1");
    }
}
