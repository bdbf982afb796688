//! Scripted stand-ins for the host capabilities: [`FakeEndpoint`] for probes and
//! [`FakeBuildHost`] for builders. Both record every call so tests can assert on them.

use std::cell::RefCell;
use std::collections::VecDeque;

use crate::builder::BuildHost;
use crate::probe::Endpoint;
use crate::types::{HttpResponse, Pair};

/// Scripted answers: consumed in order, the last one repeating forever.
#[derive(Debug)]
struct Script<T>(VecDeque<T>);

impl<T: Clone> Script<T> {
    fn next(&mut self) -> Option<T> {
        if self.0.len() > 1 {
            self.0.pop_front()
        } else {
            self.0.front().cloned()
        }
    }
}

impl<T> Default for Script<T> {
    fn default() -> Self {
        Script(VecDeque::new())
    }
}

/// One recorded [`Endpoint::http_get`] call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpGet {
    /// The path requested.
    pub path: String,
    /// The headers sent.
    pub headers: Vec<Pair>,
    /// The timeout given.
    pub timeout_ms: u32,
}

/// An [`Endpoint`] answering from a script, for probe tests.
///
/// Scripted answers are used in order and the last one repeats, so one answer scripts every
/// call. With no script, calls fail with `"FakeEndpoint: no scripted ... answer"`.
///
/// ```
/// use orca_plugin_sdk::probe::Endpoint;
/// use orca_plugin_sdk::testing::FakeEndpoint;
/// use orca_plugin_sdk::types::HttpResponse;
///
/// let endpoint = FakeEndpoint::new("10.0.0.7:8080")
///     .with_http(Err("connection refused".into()))
///     .with_http(Ok(HttpResponse::status(200)));
/// assert!(endpoint.http_get("/healthz", &[], 1000).is_err());
/// assert_eq!(endpoint.http_get("/healthz", &[], 1000).unwrap().status, 200);
/// assert_eq!(endpoint.http_get("/healthz", &[], 1000).unwrap().status, 200);
/// assert_eq!(endpoint.http_calls().len(), 3);
/// ```
#[derive(Debug, Default)]
pub struct FakeEndpoint {
    address: String,
    http: RefCell<Script<Result<HttpResponse, String>>>,
    tcp: RefCell<Script<Result<(), String>>>,
    http_calls: RefCell<Vec<HttpGet>>,
    tcp_calls: RefCell<Vec<u32>>,
}

impl FakeEndpoint {
    /// An endpoint at `address` (`ip:port`) with nothing scripted.
    pub fn new(address: impl Into<String>) -> Self {
        FakeEndpoint {
            address: address.into(),
            ..FakeEndpoint::default()
        }
    }

    /// Appends an answer for [`Endpoint::http_get`].
    pub fn with_http(self, answer: Result<HttpResponse, String>) -> Self {
        self.http.borrow_mut().0.push_back(answer);
        self
    }

    /// Appends an answer for [`Endpoint::tcp_connect`].
    pub fn with_tcp(self, answer: Result<(), String>) -> Self {
        self.tcp.borrow_mut().0.push_back(answer);
        self
    }

    /// Every `http_get` call so far, in order.
    pub fn http_calls(&self) -> Vec<HttpGet> {
        self.http_calls.borrow().clone()
    }

    /// The timeouts of every `tcp_connect` call so far, in order.
    pub fn tcp_calls(&self) -> Vec<u32> {
        self.tcp_calls.borrow().clone()
    }
}

impl Endpoint for FakeEndpoint {
    fn address(&self) -> String {
        self.address.clone()
    }

    fn http_get(
        &self,
        path: &str,
        headers: &[Pair],
        timeout_ms: u32,
    ) -> Result<HttpResponse, String> {
        self.http_calls.borrow_mut().push(HttpGet {
            path: path.to_string(),
            headers: headers.to_vec(),
            timeout_ms,
        });
        self.http
            .borrow_mut()
            .next()
            .unwrap_or_else(|| Err("FakeEndpoint: no scripted HTTP answer".into()))
    }

    fn tcp_connect(&self, timeout_ms: u32) -> Result<(), String> {
        self.tcp_calls.borrow_mut().push(timeout_ms);
        self.tcp
            .borrow_mut()
            .next()
            .unwrap_or_else(|| Err("FakeEndpoint: no scripted TCP answer".into()))
    }
}

/// One recorded [`BuildHost`] call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BuildCall {
    /// `log_line(line)`.
    LogLine {
        /// The line logged.
        line: String,
    },
    /// `checkout(repo, commit)`.
    Checkout {
        /// The repository.
        repo: String,
        /// The commit.
        commit: String,
    },
    /// `build_image(workdir, dockerfile, context, tag)`.
    BuildImage {
        /// The work directory handle.
        workdir: String,
        /// The Dockerfile path.
        dockerfile: String,
        /// The build context.
        context: String,
        /// The tag.
        tag: String,
    },
}

/// A [`BuildHost`] that records calls and answers from a script, for builder tests.
///
/// By default `checkout` answers `Ok("workdir-1")` (numbered per call) and `build_image`
/// answers `Ok("sha256:fake-image")`; script other answers with [`with_checkout`](Self::with_checkout)
/// and [`with_build_image`](Self::with_build_image) (used in order, the last one repeating).
#[derive(Debug, Default)]
pub struct FakeBuildHost {
    checkouts: RefCell<Script<Result<String, String>>>,
    builds: RefCell<Script<Result<String, String>>>,
    calls: RefCell<Vec<BuildCall>>,
}

impl FakeBuildHost {
    /// A build host with the default answers.
    pub fn new() -> Self {
        FakeBuildHost::default()
    }

    /// Appends an answer for [`BuildHost::checkout`].
    pub fn with_checkout(self, answer: Result<String, String>) -> Self {
        self.checkouts.borrow_mut().0.push_back(answer);
        self
    }

    /// Appends an answer for [`BuildHost::build_image`].
    pub fn with_build_image(self, answer: Result<String, String>) -> Self {
        self.builds.borrow_mut().0.push_back(answer);
        self
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<BuildCall> {
        self.calls.borrow().clone()
    }

    /// The lines logged so far.
    pub fn log_lines(&self) -> Vec<String> {
        self.calls
            .borrow()
            .iter()
            .filter_map(|c| match c {
                BuildCall::LogLine { line } => Some(line.clone()),
                _ => None,
            })
            .collect()
    }
}

impl BuildHost for FakeBuildHost {
    fn log_line(&self, line: &str) {
        self.calls.borrow_mut().push(BuildCall::LogLine {
            line: line.to_string(),
        });
    }

    fn checkout(&self, repo: &str, commit: &str) -> Result<String, String> {
        let mut calls = self.calls.borrow_mut();
        calls.push(BuildCall::Checkout {
            repo: repo.to_string(),
            commit: commit.to_string(),
        });
        let n = calls
            .iter()
            .filter(|c| matches!(c, BuildCall::Checkout { .. }))
            .count();
        self.checkouts
            .borrow_mut()
            .next()
            .unwrap_or_else(|| Ok(format!("workdir-{n}")))
    }

    fn build_image(
        &self,
        workdir: &str,
        dockerfile: &str,
        context: &str,
        tag: &str,
    ) -> Result<String, String> {
        self.calls.borrow_mut().push(BuildCall::BuildImage {
            workdir: workdir.to_string(),
            dockerfile: dockerfile.to_string(),
            context: context.to_string(),
            tag: tag.to_string(),
        });
        self.builds
            .borrow_mut()
            .next()
            .unwrap_or_else(|| Ok("sha256:fake-image".to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_without_script_fails_and_records() {
        let e = FakeEndpoint::new("1.2.3.4:80");
        assert_eq!(e.address(), "1.2.3.4:80");
        assert!(e.tcp_connect(50).is_err());
        assert_eq!(e.tcp_calls(), vec![50]);
        let e = e.with_tcp(Ok(()));
        assert!(e.tcp_connect(10).is_ok());
        let headers = [Pair::new("Accept", "*/*")];
        assert!(e.http_get("/x", &headers, 7).is_err());
        assert_eq!(
            e.http_calls(),
            vec![HttpGet {
                path: "/x".into(),
                headers: headers.to_vec(),
                timeout_ms: 7
            }]
        );
    }

    #[test]
    fn build_host_defaults_and_script() {
        let host = FakeBuildHost::new().with_build_image(Err("no space left".into()));
        host.log_line("cloning");
        assert_eq!(host.checkout("r", "c1"), Ok("workdir-1".into()));
        assert_eq!(host.checkout("r", "c2"), Ok("workdir-2".into()));
        assert!(host
            .build_image("workdir-2", "Dockerfile", ".", "p/s:abc")
            .is_err());
        assert_eq!(host.log_lines(), vec!["cloning".to_string()]);
        assert_eq!(host.calls().len(), 4);
    }
}
