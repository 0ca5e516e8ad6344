//! `/v1/pipeline/runs`: pipeline runs as resources.
//!
//! - `POST /v1/pipeline/runs` queues a run and answers `202` at once with its id (and a
//!   `Location`); `429 QUEUE_001` with `Retry-After` when the queue is full.
//! - `GET /v1/pipeline/runs` lists runs, newest first (`limit`, `before` for paging).
//! - `GET /v1/pipeline/runs/{id}` the run's state, every stage finished so far and, once it
//!   has ended, its result.
//! - `GET /v1/pipeline/runs/{id}/events` its events as server-sent events (`id:` the event
//!   number, `event:` its type, `data:` its JSON), the stored ones first, then live ones until
//!   `done`; `Last-Event-ID` (or `?after=N`) resumes after an event. A run that has ended with
//!   nothing left to send answers `204`, which stops a browser's `EventSource` reconnecting.
//! - `DELETE /v1/pipeline/runs/{id}` cancels a queued or running run (`409 RUN_003` when
//!   another host sharing the store runs it; `409 RUN_001` once it
//!   has ended).
//!
//! With API keys, a run belongs to the key that submitted it: a user key lists, reads, follows
//! and cancels its own runs only (another key's run is `404`, as if it did not exist); an
//! admin key reaches every run.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;

use super::auth::Caller;
use super::error::PathSegment;
use super::routes::GenerateBody;
use super::{ApiError, AppState};
use crate::error_code::ErrorCode;
use crate::runs::RunsError;
use crate::store::{RunRecord, StoredEvent};

/// How often a stream of a run executing on another host reads the store for new events.
const STORE_POLL: std::time::Duration = std::time::Duration::from_millis(500);
/// Runs a list answers at most.
const MAX_LIST: usize = 100;

fn api_error(e: RunsError) -> Response {
    runs_error(&e).into_response()
}

/// A runs error as clients read it: a store's failure without where the store is (the log
/// line of the request has it).
fn runs_error(e: &RunsError) -> ApiError {
    match e {
        RunsError::Store(store) => {
            let mut err = ApiError::new(e.code(), store.public_message());
            err.logged = Some(Box::new(e.to_string()));
            err
        }
        other => ApiError::new(other.code(), other.to_string()),
    }
}

/// The caller a request carries (`None`: the server takes no keys).
type MaybeCaller = Option<axum::Extension<Caller>>;

/// Run `id` as `caller` may see it: another key's run is not found, the answer a run that does
/// not exist gets, so that ids cannot be probed.
fn visible_run(
    runs: &crate::runs::Runs,
    caller: Option<&Caller>,
    id: &str,
) -> Result<RunRecord, RunsError> {
    let run = runs.get(id)?;
    match caller {
        Some(c) if !c.may_see(run.submitted_by.as_deref()) => {
            Err(RunsError::NotFound(id.to_string()))
        }
        _ => Ok(run),
    }
}

/// `v`, the run `id` as [`run_json`] shows it, with its place in line while it waits for a
/// worker of this server.
fn with_queue_position(mut v: Value, runs: &crate::runs::Runs, id: &str) -> Value {
    if let Some(position) = runs.queue_position(id) {
        v["queue_position"] = json!(position);
    }
    v
}

/// A run as the API shows it: the stored record with the stages reported so far.
fn run_json(run: &RunRecord, events: &[StoredEvent]) -> Value {
    let stages: Vec<Value> = events
        .iter()
        .filter(|e| e.kind == "stage_finished")
        .filter_map(|e| serde_json::from_str::<Value>(&e.data).ok())
        .filter_map(|mut v| v.get_mut("report").map(Value::take))
        .collect();
    let mut v = json!({
        "id": run.id,
        "object": "pipeline.run",
        "state": run.state,
        "created_at_ms": run.created_at_ms,
        "updated_at_ms": run.updated_at_ms,
        "request": run.request,
        "stages": stages,
        "events": events.len(),
        "links": {
            "self": format!("/v1/pipeline/runs/{}", run.id),
            "events": format!("/v1/pipeline/runs/{}/events", run.id),
        },
    });
    // An opaque id per API key (a hash, never the key): an admin, who sees every key's runs,
    // can tell whose backlog fills the queue.
    if let Some(submitter) = &run.submitted_by {
        v["submitted_by"] = json!(submitter);
    }
    if let Some(outcome) = &run.outcome {
        v["result"] = outcome.clone();
    }
    if let Some(error) = &run.error {
        v["error"] = json!(error);
    }
    v
}

/// How many runs one API key may have queued or running once the queue is half full:
/// `AGENTRT_RUN_QUEUE_PER_KEY`, else an equal share of the queue among the keys configured
/// (all of it with one key), never fewer than the workers.
fn run_share(state: &AppState) -> usize {
    crate::settings::count("AGENTRT_RUN_QUEUE_PER_KEY").unwrap_or_else(|| {
        let keys = state.api_keys.counts();
        (state.runs.capacity() / (keys.user + keys.admin).max(1)).max(state.runs.workers())
    })
}

pub async fn create(
    State(state): State<AppState>,
    caller: MaybeCaller,
    body: Result<Json<Value>, JsonRejection>,
) -> Response {
    // A submission refused here is a failed request of the endpoint, as on /pipeline (an
    // accepted one is counted when its run ends).
    let refuse = |e: ApiError| {
        super::routes::record_rejection(&state, crate::runs::STATS_ENDPOINT, e).into_response()
    };
    let body: GenerateBody = match super::body::parse_body(body) {
        Ok(b) => b,
        Err(e) => return refuse(e),
    };
    let request = body.to_json();
    let req = match body.into_request() {
        Ok(r) => r,
        Err(e) => return refuse(e),
    };
    let runs = state.runs.clone();
    let submitter = caller.map(|c| c.0.submitter);
    let share = run_share(&state);
    let submitted =
        tokio::task::spawn_blocking(move || runs.submit(req, request, submitter.as_deref(), share))
            .await;
    match submitted {
        Ok(Ok(run)) => {
            let location = format!("/v1/pipeline/runs/{}", run.id);
            let v = with_queue_position(run_json(&run, &[]), &state.runs, &run.id);
            let mut response = (StatusCode::ACCEPTED, Json(v)).into_response();
            if let Ok(value) = header::HeaderValue::from_str(&location) {
                response.headers_mut().insert(header::LOCATION, value);
            }
            response
        }
        Ok(Err(e)) => refuse(runs_error(&e)),
        Err(e) => refuse(ApiError::new(
            ErrorCode::Internal,
            format!("worker failed: {e}"),
        )),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    limit: Option<usize>,
    /// The next page: runs created before this time (ms since the epoch)...
    before: Option<i64>,
    /// ...or at it, with an id before this one (the last run of the previous page).
    before_id: Option<String>,
}

pub async fn list(
    State(state): State<AppState>,
    caller: MaybeCaller,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Response {
    let q = match query {
        Ok(Query(q)) => q,
        Err(r) => return ApiError::from(r).into_response(),
    };
    // A page size out of range is the client's mistake, not a size quietly changed; so is a
    // `before_id` without the `before` it narrows.
    let limit = q.limit.unwrap_or(20);
    if !(1..=MAX_LIST).contains(&limit) {
        return ApiError::new(
            ErrorCode::InvalidInput,
            format!("limit: expected 1 to {MAX_LIST}, got {limit}"),
        )
        .for_field("limit")
        .into_response();
    }
    if q.before_id.is_some() && q.before.is_none() {
        return ApiError::new(
            ErrorCode::InvalidInput,
            "before_id: only with before (the created_at_ms of the run it names)",
        )
        .for_field("before_id")
        .into_response();
    }
    let store = state.runs.store().clone();
    // A user key's list holds its own runs only; an admin's, every run.
    let only = caller
        .filter(|c| c.scope == super::auth::Scope::User)
        .map(|c| c.0.submitter);
    let listed = tokio::task::spawn_blocking(move || {
        let before_id = q.before_id.as_deref().unwrap_or("");
        store.list_runs(limit, q.before.map(|ms| (ms, before_id)), only.as_deref())
    })
    .await;
    match listed {
        Ok(Ok(runs)) => {
            let last = runs.last().filter(|_| runs.len() == limit);
            let (next, next_id) = (last.map(|r| r.created_at_ms), last.map(|r| r.id.clone()));
            let data: Vec<Value> = runs
                .iter()
                .map(|r| {
                    let mut item = json!({
                        "id": r.id,
                        "state": r.state,
                        "created_at_ms": r.created_at_ms,
                        "updated_at_ms": r.updated_at_ms,
                        "task_description": r.request.get("task_description"),
                        "error": r.error,
                    });
                    if let Some(submitter) = &r.submitted_by {
                        item["submitted_by"] = json!(submitter);
                    }
                    item
                })
                .collect();
            Json(json!({
                "object": "list",
                "data": data,
                "next_before": next,
                "next_before_id": next_id,
            }))
            .into_response()
        }
        Ok(Err(e)) => api_error(e.into()),
        Err(e) => ApiError::new(ErrorCode::Internal, format!("worker failed: {e}")).into_response(),
    }
}

pub async fn get(
    State(state): State<AppState>,
    caller: MaybeCaller,
    PathSegment(id): PathSegment,
) -> Response {
    let runs = state.runs.clone();
    let found = tokio::task::spawn_blocking(move || {
        let run = visible_run(&runs, caller.as_deref(), &id)?;
        let events = runs.events_after(&id, 0)?;
        Ok::<_, RunsError>(with_queue_position(run_json(&run, &events), &runs, &id))
    })
    .await;
    match found {
        Ok(Ok(v)) => Json(v).into_response(),
        Ok(Err(e)) => api_error(e),
        Err(e) => ApiError::new(ErrorCode::Internal, format!("worker failed: {e}")).into_response(),
    }
}

pub async fn cancel(
    State(state): State<AppState>,
    caller: MaybeCaller,
    PathSegment(id): PathSegment,
) -> Response {
    let runs = state.runs.clone();
    let cancelled = tokio::task::spawn_blocking(move || {
        visible_run(&runs, caller.as_deref(), &id)?;
        runs.cancel(&id)
    });
    match cancelled.await {
        Ok(Ok(run)) => (
            StatusCode::ACCEPTED,
            Json(json!({
                "id": run.id,
                "object": "pipeline.run",
                "state": run.state,
                "cancel_requested": true,
            })),
        )
            .into_response(),
        Ok(Err(e)) => api_error(e),
        Err(e) => ApiError::new(ErrorCode::Internal, format!("worker failed: {e}")).into_response(),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Resume after this event number (as `Last-Event-ID` does).
    after: Option<i64>,
}

fn sse(e: &StoredEvent) -> Event {
    Event::default()
        .id(e.seq.to_string())
        .event(e.kind.clone())
        .data(e.data.clone())
}

pub async fn events(
    State(state): State<AppState>,
    caller: MaybeCaller,
    PathSegment(id): PathSegment,
    query: Result<Query<EventsQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let q = match query {
        Ok(Query(q)) => q,
        Err(r) => return ApiError::from(r).into_response(),
    };
    // Event numbers start at 1: a resume point is 0 or above, from the query or the header
    // alike (a header that is not one was not sent by a client of this server's events).
    let header = headers.get("last-event-id").map(|v| {
        v.to_str()
            .ok()
            .and_then(|v| v.trim().parse::<i64>().ok())
            .filter(|n| *n >= 0)
            .ok_or(("Last-Event-ID", "an event number (0 or above)"))
    });
    let after = match (q.after, header) {
        (Some(n), _) if n < 0 => Err(("after", "an event number (0 or above)")),
        // A reconnecting EventSource sends Last-Event-ID beside the URL it was opened with
        // (`?after=0`): the later of the two is where it stopped, or every reconnection would
        // replay the run from the start and never get its 204.
        (Some(n), Some(Ok(seen))) => Ok(n.max(seen)),
        (Some(n), _) => Ok(n),
        (None, Some(parsed)) => parsed,
        (None, None) => Ok(0),
    };
    let after = match after {
        Ok(n) => n,
        Err((field, what)) => {
            return ApiError::new(ErrorCode::InvalidInput, format!("{field} must be {what}"))
                .for_field(field)
                .into_response();
        }
    };
    // Subscribe before reading the store: an event is then either stored already or on its
    // way to the receiver (or both; numbers tell duplicates apart).
    let live = state.runs.subscribe(&id);
    let watcher = caller.as_ref().map(|c| c.0.clone());
    let runs = state.runs.clone();
    let run_id = id.clone();
    let stored = tokio::task::spawn_blocking(move || {
        let run = visible_run(&runs, caller.as_deref(), &run_id)?;
        let events = runs.events_after(&run_id, after)?;
        Ok::<_, RunsError>((events, run.state.is_final()))
    })
    .await;
    let (stored, ended) = match stored {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return api_error(e),
        Err(e) => {
            return ApiError::new(ErrorCode::Internal, format!("worker failed: {e}"))
                .into_response();
        }
    };
    // A run that had ended when it was read has every event it will ever have in `stored`.
    if ended && stored.is_empty() {
        // An empty 200 stream makes an EventSource reconnect for ever; by the HTML spec's
        // server-sent events, a 204 fails its connection for good.
        return StatusCode::NO_CONTENT.into_response();
    }
    let store = state.runs.store().clone();
    let read_after: ReadAfter = {
        let (runs, id) = (state.runs.clone(), id.clone());
        Arc::new(move |after| runs.events_after(&id, after))
    };
    let runs = state.runs.clone();
    let keys = state.api_keys.clone();
    let stop = move || {
        // A removed key must not go on receiving its runs' code.
        if watcher.as_ref().is_some_and(|caller| !keys.admits(caller)) {
            Stop::KeyRevoked
        } else if runs.closing() {
            Stop::ServerClosing
        } else {
            Stop::No
        }
    };
    let live = if ended {
        Following::Nothing
    } else {
        live.map_or(Following::Store, Following::Live)
    };
    super::unbuffered(
        Sse::new(event_stream(
            id, store, read_after, stop, stored, live, after,
        ))
        .keep_alive(KeepAlive::default())
        .into_response(),
    )
}

/// Where a run's events come from once the stored ones are sent.
enum Following {
    /// The run has ended: nothing more will come.
    Nothing,
    /// It runs in this process.
    Live(tokio::sync::broadcast::Receiver<crate::runs::NumberedEvent>),
    /// Unfinished but not running here: another host sharing the store runs it. Followed
    /// until it ends, the client leaves, or this server shuts down: the stream then ends
    /// without `done`, and a client resuming from its last event (an `EventSource` does)
    /// follows the run on another host.
    Store,
}

/// A run's events above a number, stored or not yet ([`crate::runs::Runs::events_after`]).
type ReadAfter = Arc<dyn Fn(i64) -> Result<Vec<StoredEvent>, RunsError> + Send + Sync>;

/// `read_after` reads what a watcher behind the live channel missed; `stop` says whether to
/// stop following early.
/// Why a run's event stream stops following the run before its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    No,
    /// The server is shutting down (a run of another host is followed no longer).
    ServerClosing,
    /// The key the stream was opened with was removed, or its scope changed.
    KeyRevoked,
}

fn event_stream(
    id: String,
    store: Arc<dyn crate::store::RunStore>,
    read_after: ReadAfter,
    stop: impl Fn() -> Stop + Send + 'static,
    stored: Vec<StoredEvent>,
    following: Following,
    after: i64,
) -> impl Stream<Item = Result<Event, Infallible>> {
    async_stream(move |tx| async move {
        let mut last = after;
        for e in &stored {
            if stop() == Stop::KeyRevoked {
                return;
            }
            last = e.seq;
            if !deliver(&tx, e).await || e.kind == "done" {
                return;
            }
        }
        let mut live = match following {
            Following::Nothing => return,
            Following::Live(live) => live,
            Following::Store => loop {
                // A client that leaves ends the polling at once, not at the run's end.
                tokio::select! {
                    _ = tokio::time::sleep(STORE_POLL) => {}
                    _ = tx.closed() => return,
                }
                if stop() != Stop::No {
                    return;
                }
                let store = store.clone();
                let run_id = id.clone();
                // The run's state is read before its events: once it reads as ended, the
                // events read after it are all there will be.
                let more = tokio::task::spawn_blocking(move || {
                    let ended = store.run(&run_id)?.is_none_or(|r| r.state.is_final());
                    Ok::<_, crate::store::StoreError>((store.events_after(&run_id, last)?, ended))
                })
                .await;
                let Ok(Ok((more, ended))) = more else { return };
                for e in &more {
                    if stop() == Stop::KeyRevoked {
                        return;
                    }
                    last = e.seq;
                    if !deliver(&tx, e).await || e.kind == "done" {
                        return;
                    }
                }
                if ended || tx.is_closed() {
                    return;
                }
            },
        };
        loop {
            // A client that leaves while the run is quiet (queued, or in a long stage) ends
            // the stream now, not at the run's next event.
            let next = tokio::select! {
                next = live.recv() => next,
                _ = tx.closed() => return,
            };
            match next {
                Ok(e) => {
                    if e.seq <= last {
                        continue;
                    }
                    // A shutdown ends a run followed live with its `done`: only a key taken out
                    // of use stops it short.
                    if stop() == Stop::KeyRevoked {
                        return;
                    }
                    last = e.seq;
                    if !deliver(&tx, &e).await || e.kind == "done" {
                        return;
                    }
                }
                // Fell behind the live channel, or the run ended: the store has it all, but
                // for events it has refused so far, which the run keeps.
                Err(err) => {
                    let read_after = read_after.clone();
                    let missed = tokio::task::spawn_blocking(move || read_after(last)).await;
                    let Ok(Ok(missed)) = missed else { return };
                    for e in &missed {
                        if stop() == Stop::KeyRevoked {
                            return;
                        }
                        last = e.seq;
                        if !deliver(&tx, e).await || e.kind == "done" {
                            return;
                        }
                    }
                    if matches!(err, RecvError::Closed) {
                        return;
                    }
                }
            }
        }
    })
}

/// Hand `e` to the client: false when it has gone, or has not read for the stream stall limit
/// (`AGENTRT_STREAM_STALL_SECS`), so a stalled reader does not hold the stream (and a shutdown)
/// for the rest of the run.
async fn deliver(tx: &tokio::sync::mpsc::Sender<Event>, e: &StoredEvent) -> bool {
    let stall = super::openai::stream_stall_limit();
    matches!(
        tokio::time::timeout(stall, tx.send(sse(e))).await,
        Ok(Ok(()))
    )
}

/// A stream fed by an async task through a channel (what `async-stream` does, without the
/// macro): the task ends, or the client goes away and the next send fails.
fn async_stream<F, Fut>(f: F) -> impl Stream<Item = Result<Event, Infallible>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Event>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(64);
    tokio::spawn(f(tx));
    futures_util::stream::unfold(
        rx,
        |mut rx| async move { rx.recv().await.map(|e| (Ok(e), rx)) },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-thread runtime with timers, a store in a fresh folder, and that folder (for the
    /// test to remove).
    fn runtime_and_store(
        label: &str,
    ) -> (
        tokio::runtime::Runtime,
        Arc<dyn crate::store::RunStore>,
        std::path::PathBuf,
    ) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        let dir = std::env::temp_dir().join(format!(
            "agentrt-{label}-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).expect("dir");
        let store: Arc<dyn crate::store::RunStore> =
            Arc::new(crate::store::Store::open(&dir.join("runs.db")).expect("store"));
        (rt, store, dir)
    }

    #[test]
    fn a_stream_whose_key_is_taken_out_of_use_ends_before_the_next_event() {
        use futures_util::StreamExt;
        let (rt, store, dir) = runtime_and_store("revoked");
        let (live, following) = tokio::sync::broadcast::channel(8);
        let revoked = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let event = |seq: i64| {
            Arc::new(StoredEvent {
                seq,
                at_ms: 0,
                kind: "tokens".into(),
                data: "{\"text\":\"def\"}".into(),
            })
        };
        rt.block_on(async {
            let flag = revoked.clone();
            let mut stream = Box::pin(event_stream(
                "run".into(),
                store.clone(),
                Arc::new(move |after| Ok(store.events_after("run", after)?)),
                move || match flag.load(std::sync::atomic::Ordering::Relaxed) {
                    true => Stop::KeyRevoked,
                    false => Stop::No,
                },
                Vec::new(),
                Following::Live(following),
                0,
            ));
            live.send(event(1)).expect("send");
            let first =
                tokio::time::timeout(std::time::Duration::from_secs(10), stream.next()).await;
            assert!(matches!(first, Ok(Some(_))), "the first event is delivered");
            revoked.store(true, std::sync::atomic::Ordering::Relaxed);
            live.send(event(2)).expect("send");
            let next =
                tokio::time::timeout(std::time::Duration::from_secs(10), stream.next()).await;
            assert!(
                matches!(next, Ok(None)),
                "the stream went on after its key was removed"
            );
        });
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_client_that_leaves_a_quiet_runs_stream_ends_it_at_once() {
        let (rt, store, dir) = runtime_and_store("events");
        let (live, following) = tokio::sync::broadcast::channel(8);
        rt.block_on(async {
            let stream = event_stream(
                "run".into(),
                store.clone(),
                Arc::new(move |after| Ok(store.events_after("run", after)?)),
                || Stop::No,
                Vec::new(),
                Following::Live(following),
                0,
            );
            // The run sends nothing (queued, or in a long stage) and the client goes away.
            tokio::task::yield_now().await;
            assert_eq!(live.receiver_count(), 1);
            drop(stream);
            // Its task ends without waiting for the run's next event: it lets go of the run.
            for _ in 0..1000 {
                if live.receiver_count() == 0 {
                    break;
                }
                tokio::task::yield_now().await;
            }
            assert_eq!(live.receiver_count(), 0, "the stream still follows the run");
        });
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_stream_following_another_hosts_run_ends_when_the_server_closes() {
        use futures_util::StreamExt;
        let (rt, store, dir) = runtime_and_store("following");
        // Running on another host: it never ends while this test watches.
        store
            .insert_run("elsewhere", &Value::Null, None)
            .expect("insert");
        store.set_running("elsewhere").expect("running");
        let closing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        rt.block_on(async {
            let reader = store.clone();
            let flag = closing.clone();
            let mut stream = Box::pin(event_stream(
                "elsewhere".into(),
                store.clone(),
                Arc::new(move |after| Ok(reader.events_after("elsewhere", after)?)),
                move || match flag.load(std::sync::atomic::Ordering::Relaxed) {
                    true => Stop::ServerClosing,
                    false => Stop::No,
                },
                Vec::new(),
                Following::Store,
                0,
            ));
            // Followed while the server runs...
            let quiet = tokio::time::timeout(STORE_POLL * 3, stream.next()).await;
            assert!(quiet.is_err(), "the stream ended while the run goes on");
            // ...and ended, without `done`, within a poll of the shutdown.
            closing.store(true, std::sync::atomic::Ordering::Relaxed);
            let ended = tokio::time::timeout(STORE_POLL * 4, stream.next()).await;
            assert!(
                matches!(ended, Ok(None)),
                "the stream goes on after the shutdown"
            );
        });
        let _ = std::fs::remove_dir_all(&dir);
    }
}
