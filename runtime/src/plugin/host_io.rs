//! `wasi:io` for plugins, with waits that end by the call's deadline.
//!
//! A plugin waiting inside a WASI call (`poll`, `pollable.block`, a stream's `blocking-*`
//! method) is inside a host call, where the epoch deadline cannot stop it. Some waits never
//! end on their own: a plugin with no grants at all can fill the body of an outgoing HTTP
//! request it never sends, and its next blocking write waits for room that never comes. The
//! call's thread, instance slot and memory would stay taken for good, and enough such calls
//! would leave no slot to any plugin. Here every such wait ends at the latest just after the
//! call's deadline: the call then fails as a timeout (`PLUGIN_004`, through
//! [`PluginState::slept_past_deadline`]) and gives its slot back. Dropping a stream waits too
//! (a socket's writer finishes its write first, which a peer that never reads never lets it
//! do), and is bounded the same way. Waits that finish in time behave as WASI says; each one is
//! wasmtime-wasi-io's own implementation, only bounded.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use wasmtime::StoreContextMut;
use wasmtime::component::{Linker, Resource, ResourceTable, ResourceType};
use wasmtime_wasi::p2::{DynInputStream, DynOutputStream, DynPollable, StreamResult};
use wasmtime_wasi_io::bindings::wasi::io::poll::{Host as _, HostPollable as _};
use wasmtime_wasi_io::bindings::wasi::io::streams::{
    self, Host as _, HostInputStream, HostOutputStream,
};

use super::state::PluginState;

/// The interfaces shadowed: the versions `wasmtime_wasi::p2::add_to_linker_sync` defines (a
/// component importing any 0.2 version is linked to them). A test blocks a write past the
/// deadline, so an upgrade that renames them fails there rather than leaving waits unbounded.
const POLL: &str = "wasi:io/poll@0.2.12";
const STREAMS: &str = "wasi:io/streams@0.2.12";

/// How long after the deadline a wait is cut: a few epoch ticks, as for timers.
const PAST_DEADLINE: Duration = Duration::from_millis(50);

/// What a wait cut at the deadline says; the call is reported as a timeout all the same.
const CUT: &str = "waited in a host call past the call's deadline";

/// The instant a wait that starts now is cut at.
fn cut_at(deadline: Instant) -> tokio::time::Instant {
    tokio::time::Instant::from_std(deadline.max(Instant::now()) + PAST_DEADLINE)
}

/// Run `wait` on the WASI runtime until it finishes or the deadline (plus a little) passes;
/// past it, mark the call late and trap.
fn within<F: Future>(deadline: Instant, late: &AtomicBool, wait: F) -> wasmtime::Result<F::Output> {
    let cut = cut_at(deadline);
    // The timer is made inside the runtime: it needs the runtime's clock.
    match wasmtime_wasi::runtime::in_tokio(async { tokio::time::timeout_at(cut, wait).await }) {
        Ok(done) => Ok(done),
        Err(_elapsed) => {
            late.store(true, Ordering::Relaxed);
            Err(wasmtime::Error::msg(CUT))
        }
    }
}

/// The parts of the store a wait needs: the resource table, the deadline, the late flag.
fn parts<'a>(
    cx: &'a mut StoreContextMut<'_, PluginState>,
) -> (&'a mut ResourceTable, Instant, std::sync::Arc<AtomicBool>) {
    let state = cx.data_mut();
    (
        &mut state.table,
        state.deadline,
        state.slept_past_deadline.clone(),
    )
}

/// A stream result as the guest sees it: a stream error becomes its WIT variant (or a trap,
/// for the errors WASI turns into traps).
fn to_guest<T>(
    table: &mut ResourceTable,
    result: StreamResult<T>,
) -> wasmtime::Result<Result<T, streams::StreamError>> {
    match result {
        Ok(value) => Ok(Ok(value)),
        Err(e) => Ok(Err(table.convert_stream_error(e)?)),
    }
}

type Cx<'a> = StoreContextMut<'a, PluginState>;
type Output = Resource<DynOutputStream>;
type Input = Resource<DynInputStream>;

/// Replace the waiting functions of `wasi:io/poll` and `wasi:io/streams` in `linker` (which
/// already has WASI's) with ones bounded by the call's deadline.
pub(super) fn bound_waits(linker: &mut Linker<PluginState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut poll = linker.instance(POLL)?;
    poll.func_wrap(
        "poll",
        |mut cx: Cx<'_>, (list,): (Vec<Resource<DynPollable>>,)| {
            let (table, deadline, late) = parts(&mut cx);
            Ok((within(deadline, &late, table.poll(list))??,))
        },
    )?;
    poll.func_wrap(
        "[method]pollable.block",
        |mut cx: Cx<'_>, (pollable,): (Resource<DynPollable>,)| {
            let (table, deadline, late) = parts(&mut cx);
            within(deadline, &late, table.block(pollable))??;
            Ok(())
        },
    )?;
    let mut streams = linker.instance(STREAMS)?;
    streams.resource(
        "output-stream",
        ResourceType::host::<DynOutputStream>(),
        |mut cx: Cx<'_>, rep| {
            let (table, deadline, late) = parts(&mut cx);
            let stream = Resource::<DynOutputStream>::new_own(rep);
            within(deadline, &late, HostOutputStream::drop(table, stream))?
        },
    )?;
    streams.resource(
        "input-stream",
        ResourceType::host::<DynInputStream>(),
        |mut cx: Cx<'_>, rep| {
            let (table, deadline, late) = parts(&mut cx);
            let stream = Resource::<DynInputStream>::new_own(rep);
            within(deadline, &late, HostInputStream::drop(table, stream))?
        },
    )?;
    streams.func_wrap(
        "[method]output-stream.blocking-write-and-flush",
        |mut cx: Cx<'_>, (stream, bytes): (Output, Vec<u8>)| {
            let (table, deadline, late) = parts(&mut cx);
            let done = within(
                deadline,
                &late,
                table.blocking_write_and_flush(stream, bytes),
            )?;
            Ok((to_guest(table, done)?,))
        },
    )?;
    streams.func_wrap(
        "[method]output-stream.blocking-write-zeroes-and-flush",
        |mut cx: Cx<'_>, (stream, len): (Output, u64)| {
            let (table, deadline, late) = parts(&mut cx);
            let done = within(
                deadline,
                &late,
                table.blocking_write_zeroes_and_flush(stream, len),
            )?;
            Ok((to_guest(table, done)?,))
        },
    )?;
    streams.func_wrap(
        "[method]output-stream.blocking-flush",
        |mut cx: Cx<'_>, (stream,): (Output,)| {
            let (table, deadline, late) = parts(&mut cx);
            let done = within(deadline, &late, table.blocking_flush(stream))?;
            Ok((to_guest(table, done)?,))
        },
    )?;
    streams.func_wrap(
        "[method]output-stream.blocking-splice",
        |mut cx: Cx<'_>, (dest, src, len): (Output, Input, u64)| {
            let (table, deadline, late) = parts(&mut cx);
            let done = within(deadline, &late, table.blocking_splice(dest, src, len))?;
            Ok((to_guest(table, done)?,))
        },
    )?;
    streams.func_wrap(
        "[method]input-stream.blocking-read",
        |mut cx: Cx<'_>, (stream, len): (Input, u64)| {
            let (table, deadline, late) = parts(&mut cx);
            let done = within(deadline, &late, table.blocking_read(stream, len))?;
            Ok((to_guest(table, done)?,))
        },
    )?;
    streams.func_wrap(
        "[method]input-stream.blocking-skip",
        |mut cx: Cx<'_>, (stream, len): (Input, u64)| {
            let (table, deadline, late) = parts(&mut cx);
            let done = within(deadline, &late, table.blocking_skip(stream, len))?;
            Ok((to_guest(table, done)?,))
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_that_never_ends_is_cut_just_after_the_deadline_and_marks_the_call_late() {
        let late = AtomicBool::new(false);
        let deadline = Instant::now() + Duration::from_millis(20);
        let outcome = within(deadline, &late, std::future::pending::<()>());
        let error = outcome.expect_err("a wait without end returned");
        assert_eq!(error.to_string(), CUT);
        assert!(late.load(Ordering::Relaxed), "the call was not marked late");
        assert!(Instant::now() >= deadline, "cut before the deadline");
    }

    #[test]
    fn a_wait_that_finishes_in_time_is_left_alone() {
        let late = AtomicBool::new(false);
        let deadline = Instant::now() + Duration::from_secs(30);
        let outcome = within(deadline, &late, async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            7
        });
        assert_eq!(outcome.expect("finished in time"), 7);
        assert!(!late.load(Ordering::Relaxed));
    }

    #[test]
    fn a_deadline_already_past_still_gives_a_ready_wait_its_answer() {
        let late = AtomicBool::new(false);
        let past = Instant::now() - Duration::from_secs(1);
        assert_eq!(within(past, &late, async { 1 }).expect("ready"), 1);
        assert!(!late.load(Ordering::Relaxed));
    }
}
