//! `wasi:clocks/monotonic-clock` for plugins, with timers that end by the call's deadline.
//!
//! A plugin asleep in a WASI call (`sleep`, a `poll` on a timer) is inside a host call, where
//! the epoch deadline cannot stop it: a sleep of `u64::MAX` nanoseconds would keep its call's
//! thread, instance slot and memory for good, and enough such calls would leave no slot to any
//! plugin. Every timer a plugin sets here fires at the latest just after its call's deadline;
//! the guest resumes and the epoch deadline stops it, and a call that still returns after a
//! timer was cut (the epoch ticker runs a little late under load) is a timeout all the same
//! (`PLUGIN_004`, [`PluginState::slept_past_deadline`]). Timers within the deadline behave as
//! WASI says. `now` and `resolution` are WASI's own, from [`CallClock`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use wasmtime::StoreContextMut;
use wasmtime::component::{Linker, Resource};
use wasmtime_wasi::p2::{DynPollable, Pollable, subscribe};

use super::state::PluginState;

/// The interface shadowed: the version `wasmtime_wasi::p2::add_to_linker_sync` defines (a
/// component importing any 0.2 version is linked to it). A test sleeps past a deadline, so an
/// upgrade that renames it fails there rather than leaving timers uncapped.
const INTERFACE: &str = "wasi:clocks/monotonic-clock@0.2.12";

/// How long after the deadline a capped timer fires: a few epoch ticks, so that the epoch
/// deadline has passed when the guest resumes, and its next check stops it.
const PAST_DEADLINE: Duration = Duration::from_millis(50);

/// The zero of every plugin's monotonic clock (WASI leaves it unspecified).
static ORIGIN: LazyLock<Instant> = LazyLock::new(Instant::now);

/// The monotonic clock plugins read: nanoseconds since [`ORIGIN`], so that a deadline given as
/// an instant can be turned into a wait here.
pub struct CallClock;

impl wasmtime_wasi::HostMonotonicClock for CallClock {
    fn resolution(&self) -> u64 {
        1
    }

    fn now(&self) -> u64 {
        u64::try_from(ORIGIN.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// A timer that fires at its instant; one cut at the deadline says so when it fires.
struct Timer {
    at: tokio::time::Instant,
    cut: Option<Arc<AtomicBool>>,
}

#[async_trait::async_trait]
impl Pollable for Timer {
    async fn ready(&mut self) {
        tokio::time::sleep_until(self.at).await;
        if let Some(cut) = &self.cut {
            cut.store(true, Ordering::Relaxed);
        }
    }
}

/// When a timer of `wait` set now fires, for a call whose deadline is `deadline`, and whether
/// that is sooner than asked (cut at the deadline).
fn fires_at(deadline: Instant, wait: Duration) -> (tokio::time::Instant, bool) {
    let now = Instant::now();
    let cap = deadline.max(now) + PAST_DEADLINE;
    let (at, cut) = match now.checked_add(wait) {
        Some(at) if at <= cap => (at, false),
        _ => (cap, true),
    };
    (tokio::time::Instant::from_std(at), cut)
}

fn subscribe_in(
    mut cx: StoreContextMut<'_, PluginState>,
    wait: Duration,
) -> wasmtime::Result<(Resource<DynPollable>,)> {
    let state = cx.data_mut();
    let (at, cut) = fires_at(state.deadline, wait);
    let cut = cut.then(|| state.slept_past_deadline.clone());
    let timer = state.table.push(Timer { at, cut })?;
    Ok((subscribe(&mut state.table, timer)?,))
}

/// Replace the clock's two timer functions in `linker` (which already has WASI's).
pub(super) fn cap_timers(linker: &mut Linker<PluginState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut clock = linker.instance(INTERFACE)?;
    clock.func_wrap(
        "subscribe-duration",
        |cx: StoreContextMut<'_, PluginState>, (nanos,): (u64,)| {
            subscribe_in(cx, Duration::from_nanos(nanos))
        },
    )?;
    clock.func_wrap(
        "subscribe-instant",
        |cx: StoreContextMut<'_, PluginState>, (when,): (u64,)| {
            let now = wasmtime_wasi::HostMonotonicClock::now(&CallClock);
            subscribe_in(cx, Duration::from_nanos(when.saturating_sub(now)))
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timers_fire_as_asked_within_the_deadline_and_just_after_it_beyond() {
        let deadline = Instant::now() + Duration::from_secs(10);
        let (short, cut) = fires_at(deadline, Duration::from_secs(1));
        assert!(short.into_std() <= Instant::now() + Duration::from_secs(1));
        assert!(!cut, "a timer within the deadline was cut");
        for forever in [Duration::from_secs(3600), Duration::MAX] {
            let capped = tokio::time::Instant::from_std(deadline + PAST_DEADLINE);
            assert_eq!(fires_at(deadline, forever), (capped, true));
        }
        // A deadline already past: at once, not before now.
        let past = Instant::now() - Duration::from_secs(1);
        let (at, cut) = fires_at(past, Duration::MAX);
        assert!(at.into_std() >= Instant::now() && cut);
    }
}
