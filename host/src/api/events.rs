//! `GET /api/v1/events`: the event stream, filtered; with `follow=true` as server-sent events
//! (the matching history first, then live events as they are stored); and
//! `GET /api/v1/notifications`, the state of outbound notifications.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use orca_docker::ContainerRuntime;
use orca_store::{EventQuery, EventRecord};
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;

use super::{ApiError, AppState};

/// Events returned without `limit`.
const DEFAULT_LIMIT: usize = 100;
/// The most one request returns.
const MAX_LIMIT: usize = 10_000;

/// Query parameters of `GET /api/v1/events`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsParams {
    /// Service name, or `project/name`.
    service: Option<String>,
    /// Project.
    project: Option<String>,
    /// Kind or kind family (`instance.crashed`, `rollout`).
    kind: Option<String>,
    /// How far back: `30s`, `10m`, `2h`, `7d`.
    since: Option<String>,
    /// Only events after this sequence number.
    after: Option<u64>,
    /// At most this many of the history (the newest).
    limit: Option<usize>,
    /// Keep the connection open and stream new events (SSE).
    #[serde(default)]
    follow: bool,
}

/// Parses `30s`, `10m`, `2h`, `7d` (a whole number and one unit).
pub fn parse_since(s: &str) -> Result<Duration, String> {
    let bad = || {
        format!("since: `{s}` is not a duration; use a whole number and a unit: 30s, 10m, 2h, 7d")
    };
    let unit = s.chars().last().ok_or_else(bad)?;
    let n: u64 = s[..s.len() - unit.len_utf8()].parse().map_err(|_| bad())?;
    let secs = match unit {
        's' => n,
        'm' => n.saturating_mul(60),
        'h' => n.saturating_mul(3600),
        'd' => n.saturating_mul(86_400),
        _ => return Err(bad()),
    };
    Ok(Duration::from_secs(secs))
}

fn query(p: &EventsParams) -> Result<EventQuery, ApiError> {
    let (project, service) = match (&p.service, &p.project) {
        (Some(s), project) => match s.split_once('/') {
            Some((sp, sn)) => {
                if project.as_ref().is_some_and(|p| p != sp) {
                    return Err(ApiError::bad_request(format!(
                        "service `{s}` names project `{sp}` but project is `{}`",
                        project.as_deref().unwrap_or_default()
                    )));
                }
                (Some(sp.to_string()), Some(sn.to_string()))
            }
            None => (project.clone(), Some(s.clone())),
        },
        (None, project) => (project.clone(), None),
    };
    let since_ms = match &p.since {
        Some(s) => {
            let d = parse_since(s).map_err(ApiError::bad_request)?;
            Some(crate::controller::now_ms().saturating_sub(d.as_millis() as u64))
        }
        None => None,
    };
    let limit = p.limit.unwrap_or(DEFAULT_LIMIT);
    if limit > MAX_LIMIT {
        return Err(ApiError::bad_request(format!(
            "limit: {limit} is over the maximum of {MAX_LIMIT}"
        )));
    }
    Ok(EventQuery {
        after_seq: p.after,
        since_ms,
        project,
        service,
        kind: p.kind.clone(),
        limit,
    })
}

fn sse(e: &EventRecord) -> SseEvent {
    SseEvent::default()
        .id(e.seq.to_string())
        .event(e.kind.clone())
        .json_data(e)
        .unwrap_or_else(|_| SseEvent::default().comment("unencodable event"))
}

/// `GET /api/v1/events`.
pub async fn list<R: ContainerRuntime>(
    State(s): State<AppState<R>>,
    params: Result<Query<EventsParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) = params.map_err(|e| {
        ApiError::bad_request(format!(
            "{}; allowed parameters: service, project, kind, since, after, limit, follow",
            e.body_text()
        ))
    })?;
    let q = query(&params)?;
    if !params.follow {
        let events = s.store.list_events(&q)?;
        return Ok(Json(serde_json::json!({ "events": events })).into_response());
    }
    // Subscribe before reading the history, so nothing falls between the two.
    let mut live = s.events.subscribe();
    let history = s.store.list_events(&q)?;
    let mut last = history.last().map_or(q.after_seq.unwrap_or(0), |e| e.seq);
    let store = s.store.clone();
    let closed = s.events.closed();
    let stream = async_stream(history, move |tx| async move {
        loop {
            let next = tokio::select! {
                _ = closed.cancelled() => return,
                next = live.recv() => next,
            };
            match next {
                Ok(e) => {
                    if e.seq > last && q.matches(&e) {
                        last = e.seq;
                        if tx.send(sse(&e)).await.is_err() {
                            return;
                        }
                    }
                }
                Err(RecvError::Lagged(_)) => {
                    // Fell behind the live buffer: catch up from the store.
                    let missed = store
                        .list_events(&EventQuery {
                            after_seq: Some(last),
                            limit: MAX_LIMIT,
                            ..q.clone()
                        })
                        .unwrap_or_default();
                    for e in missed {
                        last = e.seq;
                        if tx.send(sse(&e)).await.is_err() {
                            return;
                        }
                    }
                }
                Err(RecvError::Closed) => return,
            }
        }
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

/// `GET /api/v1/notifications`: `[[notify]]` targets (never their secrets) and the recent
/// deliveries with their state.
pub async fn notifications<R: ContainerRuntime>(
    State(s): State<AppState<R>>,
) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "targets": s.notifier.targets(),
        "deliveries": s.notifier.deliveries(),
    }))
}

/// The history's events, then what `live` sends, as one stream.
fn async_stream<F, Fut>(
    history: Vec<EventRecord>,
    live: F,
) -> impl futures::Stream<Item = Result<SseEvent, Infallible>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<SseEvent>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(live(tx));
    let rx = tokio_stream(rx);
    futures::stream::iter(history.into_iter().map(|e| sse(&e)))
        .chain(rx)
        .map(Ok)
}

fn tokio_stream(
    mut rx: tokio::sync::mpsc::Receiver<SseEvent>,
) -> impl futures::Stream<Item = SseEvent> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_a_number_and_a_unit() {
        assert_eq!(parse_since("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_since("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_since("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_since("7d"), Ok(Duration::from_secs(604_800)));
        for bad in ["", "m", "10", "10x", "-5m", "1.5h"] {
            assert!(parse_since(bad).is_err(), "{bad}");
        }
    }
}
