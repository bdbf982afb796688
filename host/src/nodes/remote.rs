//! `RemoteRuntime`: the [`ContainerRuntime`] port of a remote node, over its agent session
//! (the master is the HTTP/2 client of the agent). One request per call, multiplexed on the
//! one connection; a broken session is [`RuntimeError::Unavailable`], like a daemon restart.

use std::time::Duration;

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, BodyStream, Full, StreamBody};
use hyper::body::Frame;
use hyper::client::conn::http2::SendRequest;
use hyper::{Method, Request, StatusCode};
use orca_docker::{
    ContainerInfo, ContainerRuntime, ContainerSpec, ContainerStats, LogLine, NodeInfo,
    RuntimeError, RuntimeEvent, SwarmInfo, SwarmJoin, VolumeInfo,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::proto::{path, AgentEvent, EnsureNetwork, Hello};

/// The body type of requests to an agent.
pub type ReqBody = UnsyncBoxBody<Bytes, std::io::Error>;

/// Bound on one call that is not a stream (a create may pull an image: longer).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
const CREATE_TIMEOUT: Duration = Duration::from_secs(180);

/// A remote node's runtime.
#[derive(Clone)]
pub struct RemoteRuntime {
    node: String,
    send: SendRequest<ReqBody>,
}

fn empty() -> ReqBody {
    Full::new(Bytes::new())
        .map_err(|e| match e {})
        .boxed_unsync()
}

fn json_body<T: Serialize>(value: &T) -> ReqBody {
    Full::new(Bytes::from(
        serde_json::to_vec(value).expect("protocol types serialize"),
    ))
    .map_err(|e| match e {})
    .boxed_unsync()
}

/// Percent-encodes a query value.
fn q(value: &str) -> String {
    crate::cli::client::enc(value)
}

impl RemoteRuntime {
    pub fn new(node: &str, send: SendRequest<ReqBody>) -> RemoteRuntime {
        RemoteRuntime {
            node: node.to_string(),
            send,
        }
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// Whether the session is still open.
    pub fn is_open(&self) -> bool {
        !self.send.is_closed()
    }

    fn unavailable(&self, why: impl std::fmt::Display) -> RuntimeError {
        RuntimeError::Unavailable {
            reason: format!("node {}: {why}", self.node),
        }
    }

    /// One request; `deadline` is how long the caller waits for it (sent along, so a late
    /// arrival is refused by the agent).
    async fn send(
        &self,
        method: Method,
        uri: &str,
        body: ReqBody,
        deadline: Duration,
    ) -> Result<hyper::Response<hyper::body::Incoming>, RuntimeError> {
        let mut send = self.send.clone();
        send.ready()
            .await
            .map_err(|e| self.unavailable(format!("agent session closed ({e})")))?;
        let now = crate::controller::now_ms();
        let mut req = Request::builder().uri(format!("http://agent{uri}"));
        if uri == path::HELLO {
            req = req.header(super::stale::MASTER_MS, now.to_string());
        }
        if method == Method::POST {
            // Past this the master has given up on the call: the agent must not act on it.
            let not_after = now + deadline.as_millis() as u64;
            req = req.header(super::stale::NOT_AFTER_MS, not_after.to_string());
        }
        let req = req.method(method).body(body).expect("valid request");
        let resp = send
            .send_request(req)
            .await
            .map_err(|e| self.unavailable(format!("agent session failed ({e})")))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let bytes = self.body(resp).await?;
        Err(
            serde_json::from_slice::<RuntimeError>(&bytes).unwrap_or_else(|_| {
                RuntimeError::Engine {
                    op: uri.to_string(),
                    reason: format!(
                        "node {} answered {status}: {}",
                        self.node,
                        String::from_utf8_lossy(&bytes)
                    ),
                }
            }),
        )
    }

    /// A whole answer body; a broken session is [`RuntimeError::Unavailable`].
    async fn body(
        &self,
        resp: hyper::Response<hyper::body::Incoming>,
    ) -> Result<Bytes, RuntimeError> {
        Ok(resp
            .into_body()
            .collect()
            .await
            .map_err(|e| self.unavailable(e))?
            .to_bytes())
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        uri: &str,
        body: ReqBody,
        timeout: Duration,
    ) -> Result<T, RuntimeError> {
        let work = async {
            let resp = self.send(method, uri, body, timeout).await?;
            let bytes = self.body(resp).await?;
            serde_json::from_slice(&bytes).map_err(|e| RuntimeError::Engine {
                op: uri.to_string(),
                reason: format!("node {} sent an unreadable answer: {e}", self.node),
            })
        };
        tokio::time::timeout(timeout, work)
            .await
            .unwrap_or_else(|_| Err(self.unavailable(format!("no answer in {timeout:?}"))))
    }

    /// A streamed answer of JSON lines, decoded one by one; ends after its first error.
    fn lines<T: DeserializeOwned + Send + 'static>(
        &self,
        uri: String,
    ) -> BoxStream<'static, Result<T, RuntimeError>> {
        let this = self.clone();
        let stream = async_stream(move |tx| async move {
            let resp = match this.send(Method::GET, &uri, empty(), CALL_TIMEOUT).await {
                Ok(r) => r,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            let mut body = BodyStream::new(resp.into_body());
            let mut buf: Vec<u8> = Vec::new();
            while let Some(frame) = body.next().await {
                let data = match frame {
                    Ok(f) => match f.into_data() {
                        Ok(d) => d,
                        Err(_) => continue,
                    },
                    Err(e) => {
                        let _ = tx.send(Err(this.unavailable(e))).await;
                        return;
                    }
                };
                buf.extend_from_slice(&data);
                while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=nl).collect();
                    let item = serde_json::from_slice::<Result<T, RuntimeError>>(&line)
                        .unwrap_or_else(|e| {
                            Err(RuntimeError::Engine {
                                op: uri.clone(),
                                reason: format!("unreadable line from node {}: {e}", this.node),
                            })
                        });
                    let failed = item.is_err();
                    if tx.send(item).await.is_err() || failed {
                        return;
                    }
                }
            }
        });
        stream
    }

    /// The agent's hello (first request of a session).
    pub async fn hello(&self) -> Result<Hello, RuntimeError> {
        self.call(Method::GET, path::HELLO, empty(), CALL_TIMEOUT)
            .await
    }

    /// The node's event stream: heartbeats and engine events.
    pub fn agent_events(&self) -> BoxStream<'static, Result<AgentEvent, RuntimeError>> {
        self.lines(path::EVENTS.to_string())
    }
}

/// A stream fed by a task through a bounded channel (the task ends when the stream is
/// dropped, at its next send).
fn async_stream<T: Send + 'static, F>(
    f: impl FnOnce(tokio::sync::mpsc::Sender<T>) -> F,
) -> BoxStream<'static, T>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(f(tx));
    tokio_stream_from(rx)
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> BoxStream<'static, T> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
}

impl ContainerRuntime for RemoteRuntime {
    async fn list(&self) -> Result<Vec<ContainerInfo>, RuntimeError> {
        self.call(Method::GET, path::CONTAINERS, empty(), CALL_TIMEOUT)
            .await
    }

    async fn create_and_start(&self, spec: &ContainerSpec) -> Result<ContainerInfo, RuntimeError> {
        self.call(
            Method::POST,
            path::CONTAINERS,
            json_body(spec),
            CREATE_TIMEOUT,
        )
        .await
    }

    async fn stop_and_remove(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        let uri = format!(
            "{}/{}/remove?grace_ms={}",
            path::CONTAINERS,
            q(id),
            grace.as_millis()
        );
        self.call::<()>(Method::POST, &uri, empty(), CALL_TIMEOUT + grace)
            .await
    }

    async fn ensure_network(
        &self,
        name: &str,
        labels: &std::collections::BTreeMap<String, String>,
    ) -> Result<(), RuntimeError> {
        let body = EnsureNetwork {
            name: name.to_string(),
            labels: labels.clone(),
        };
        self.call(
            Method::POST,
            path::NETWORKS_ENSURE,
            json_body(&body),
            CALL_TIMEOUT,
        )
        .await
    }

    async fn remove_network(&self, name: &str) -> Result<(), RuntimeError> {
        self.call(
            Method::POST,
            path::NETWORKS_REMOVE,
            json_body(&name),
            CALL_TIMEOUT,
        )
        .await
    }

    fn logs(
        &self,
        id: &str,
        tail: Option<usize>,
        follow: bool,
    ) -> BoxStream<'static, Result<LogLine, RuntimeError>> {
        let mut uri = format!("{}/{}/logs?follow={follow}", path::CONTAINERS, q(id));
        if let Some(t) = tail {
            uri.push_str(&format!("&tail={t}"));
        }
        self.lines(uri)
    }

    fn events(&self) -> BoxStream<'static, Result<RuntimeEvent, RuntimeError>> {
        self.agent_events()
            .filter_map(|item| async move {
                match item {
                    Ok(AgentEvent::Runtime { event }) => Some(Ok(event)),
                    Ok(AgentEvent::Heartbeat { .. }) => None,
                    Ok(AgentEvent::EngineError { reason }) => {
                        Some(Err(RuntimeError::Unavailable { reason }))
                    }
                    Err(e) => Some(Err(e)),
                }
            })
            .boxed()
    }

    async fn node_info(&self) -> Result<NodeInfo, RuntimeError> {
        self.call(Method::GET, path::NODE, empty(), CALL_TIMEOUT)
            .await
    }

    async fn list_volumes(&self) -> Result<Vec<VolumeInfo>, RuntimeError> {
        self.call(Method::GET, path::VOLUMES, empty(), CALL_TIMEOUT)
            .await
    }

    async fn remove_volume(&self, name: &str) -> Result<(), RuntimeError> {
        self.call(
            Method::POST,
            path::VOLUMES_REMOVE,
            json_body(&name),
            CALL_TIMEOUT,
        )
        .await
    }

    async fn image_exists(&self, image: &str) -> Result<bool, RuntimeError> {
        let uri = format!("{}?image={}", path::IMAGE_EXISTS, q(image));
        self.call(Method::GET, &uri, empty(), CALL_TIMEOUT).await
    }

    async fn stats(&self, id: &str) -> Result<ContainerStats, RuntimeError> {
        let uri = format!("{}/{}/stats", path::CONTAINERS, q(id));
        self.call(Method::GET, &uri, empty(), CALL_TIMEOUT).await
    }

    fn export_image(&self, image: &str) -> BoxStream<'static, Result<Bytes, RuntimeError>> {
        let err = RuntimeError::Engine {
            op: "export image".into(),
            reason: format!(
                "images are shipped from the master to nodes, not back (node {}, image {image})",
                self.node
            ),
        };
        futures::stream::once(async move { Err(err) }).boxed()
    }

    async fn import_image(
        &self,
        tar: BoxStream<'static, Result<Bytes, RuntimeError>>,
    ) -> Result<(), RuntimeError> {
        let body = StreamBody::new(tar.map(|chunk| {
            chunk
                .map(Frame::data)
                .map_err(|e| std::io::Error::other(e.to_string()))
        }));
        let body = BodyExt::boxed_unsync(body);
        // An image load is bounded by its size, not a fixed time: allow ten minutes.
        self.call(
            Method::POST,
            path::IMAGE_LOAD,
            body,
            Duration::from_secs(600),
        )
        .await
    }

    async fn pull_image(&self, image: &str) -> Result<(), RuntimeError> {
        let uri = format!("{}?image={}", path::IMAGE_PULL, q(image));
        // The node's engine bounds the pull itself; this only guards the session.
        self.call(Method::POST, &uri, empty(), Duration::from_secs(360))
            .await
    }

    async fn swarm(&self) -> Result<Option<SwarmInfo>, RuntimeError> {
        self.call(Method::GET, path::SWARM, empty(), CALL_TIMEOUT)
            .await
    }

    async fn swarm_join(&self, join: &SwarmJoin) -> Result<(), RuntimeError> {
        // The engine answers once it has joined (or given up, within its own bound).
        self.call(
            Method::POST,
            path::SWARM_JOIN,
            json_body(join),
            Duration::from_secs(60),
        )
        .await
    }

    async fn swarm_leave(&self) -> Result<(), RuntimeError> {
        self.call(Method::POST, path::SWARM_LEAVE, empty(), CALL_TIMEOUT)
            .await
    }

    async fn build_image(
        &self,
        _context_tar: Vec<u8>,
        _dockerfile: &str,
        _tag: &str,
        _on_line: Box<dyn FnMut(&str) + Send>,
    ) -> Result<String, RuntimeError> {
        Err(RuntimeError::Engine {
            op: "build image".into(),
            reason: format!(
                "builds run on the master's engine; the image is shipped to node {}",
                self.node
            ),
        })
    }
}

/// The status an agent answers a [`RuntimeError`] with.
pub fn status_of(e: &RuntimeError) -> StatusCode {
    match e {
        RuntimeError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        RuntimeError::ImageNotFound { .. } | RuntimeError::NotFound { .. } => StatusCode::NOT_FOUND,
        RuntimeError::Conflict { .. } => StatusCode::CONFLICT,
        RuntimeError::Build { .. } | RuntimeError::Engine { .. } => {
            StatusCode::UNPROCESSABLE_ENTITY
        }
    }
}
