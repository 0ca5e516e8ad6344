//! Instance slots for plugin calls: the pooling allocator's configuration, sized for the
//! largest default plugin, and the counting semaphore that makes a burst of calls wait for a
//! free slot instead of failing to instantiate.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::grants::HostLimits;

/// A counting semaphore over the pool's call slots (`None`: unbounded), first come first
/// served: a freed slot goes to the call that has waited longest, so a call with a short
/// deadline is not starved into `QUEUE_001` by later ones that keep winning the race.
pub(super) struct CallSlots {
    state: Option<std::sync::Mutex<SlotState>>,
    freed: std::sync::Condvar,
}

struct SlotState {
    free: u32,
    /// Tickets of the calls waiting, oldest first.
    waiting: VecDeque<u64>,
    next_ticket: u64,
}

impl CallSlots {
    pub(super) fn new(limit: Option<u32>) -> Self {
        Self {
            state: limit.map(|free| {
                std::sync::Mutex::new(SlotState {
                    free,
                    waiting: VecDeque::new(),
                    next_ticket: 0,
                })
            }),
            freed: std::sync::Condvar::new(),
        }
    }

    /// Wait at most `patience` for a slot (`None` when every slot stayed taken: calls still
    /// running, or abandoned ones stuck in a host call); it is given back when the guard drops.
    pub(super) fn acquire_within(self: &Arc<Self>, patience: Duration) -> Option<SlotGuard> {
        let Some(state) = &self.state else {
            return Some(SlotGuard(self.clone()));
        };
        let until = Instant::now() + patience;
        let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
        if st.free > 0 && st.waiting.is_empty() {
            st.free -= 1;
            return Some(SlotGuard(self.clone()));
        }
        let ticket = st.next_ticket;
        st.next_ticket += 1;
        st.waiting.push_back(ticket);
        loop {
            if st.free > 0 && st.waiting.front() == Some(&ticket) {
                st.waiting.pop_front();
                st.free -= 1;
                // Another slot may be free for the next in line.
                self.freed.notify_all();
                return Some(SlotGuard(self.clone()));
            }
            let Some(left) = until.checked_duration_since(Instant::now()) else {
                // Out of the line, which may put a caller that can have a free slot first.
                st.waiting.retain(|t| *t != ticket);
                self.freed.notify_all();
                return None;
            };
            st = self
                .freed
                .wait_timeout(st, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// How many calls wait for a slot.
    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.state.as_ref().map_or(0, |s| {
            s.lock().unwrap_or_else(|p| p.into_inner()).waiting.len()
        })
    }
}

/// A taken call slot; it travels with the call's thread, so a call still stuck in a host call
/// after its caller gave up keeps its slot until it really ends.
pub(super) struct SlotGuard(Arc<CallSlots>);

impl Drop for SlotGuard {
    fn drop(&mut self) {
        if let Some(state) = &self.0.state {
            state.lock().unwrap_or_else(|p| p.into_inner()).free += 1;
            // Every waiter looks: only the first in line takes it.
            self.0.freed.notify_all();
        }
    }
}

/// Slots for `limits.instance_pool` concurrent plugin calls, each sized for the largest default
/// plugin (the CPython-based check: a dozen core instances, a few memories, large tables).
/// Memory slots are reserved address space, committed only as a plugin touches its pages, and
/// reset between calls from the module's copy-on-write image.
pub(super) fn instance_pool(limits: &HostLimits) -> wasmtime::PoolingAllocationConfig {
    const CORE_INSTANCES_PER_COMPONENT: u32 = 32;
    const MEMORIES_PER_COMPONENT: u32 = 4;
    const TABLES_PER_COMPONENT: u32 = 8;
    let calls = limits.instance_pool;
    let mut pool = wasmtime::PoolingAllocationConfig::default();
    pool.total_component_instances(calls)
        .total_core_instances(calls * CORE_INSTANCES_PER_COMPONENT)
        .total_memories(calls * MEMORIES_PER_COMPONENT)
        .total_tables(calls * TABLES_PER_COMPONENT)
        .max_core_instances_per_component(CORE_INSTANCES_PER_COMPONENT)
        .max_memories_per_component(MEMORIES_PER_COMPONENT)
        .max_tables_per_component(TABLES_PER_COMPONENT)
        .max_memories_per_module(1)
        .max_tables_per_module(4)
        .table_elements(1 << 17)
        .max_core_instance_size(1 << 20)
        .max_memory_size((limits.max_memory_mb as usize) << 20);
    pool
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONG: Duration = Duration::from_secs(60);

    #[test]
    fn call_slots_make_a_burst_wait_instead_of_fail() {
        let slots = Arc::new(CallSlots::new(Some(1)));
        let first = slots.acquire_within(LONG).expect("a free slot");
        let (tx, rx) = std::sync::mpsc::channel();
        let waiting = slots.clone();
        let waiter = std::thread::spawn(move || {
            let _slot = waiting.acquire_within(LONG).expect("the freed slot");
            tx.send(()).expect("send");
        });
        assert!(
            rx.recv_timeout(Duration::from_millis(200)).is_err(),
            "a second call got a slot while the only one was taken"
        );
        drop(first);
        rx.recv().expect("the waiting call gets the freed slot");
        waiter.join().expect("join");
        let unbounded = Arc::new(CallSlots::new(None));
        let _a = unbounded.acquire_within(Duration::ZERO).expect("unbounded");
        let _b = unbounded.acquire_within(Duration::ZERO).expect("unbounded");
    }

    #[test]
    fn a_freed_slot_goes_to_the_call_that_waited_longest() {
        let slots = Arc::new(CallSlots::new(Some(1)));
        let held = slots.acquire_within(LONG).expect("a free slot");
        let (tx, rx) = std::sync::mpsc::channel();
        let mut waiters = Vec::new();
        for name in ["first", "second"] {
            let (theirs, tx) = (slots.clone(), tx.clone());
            let queued = slots.waiting();
            waiters.push(std::thread::spawn(move || {
                let slot = theirs.acquire_within(LONG).expect("a slot in turn");
                tx.send(name).expect("send");
                // Held until the test has seen who got it.
                std::thread::sleep(Duration::from_millis(50));
                drop(slot);
            }));
            while slots.waiting() == queued {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        // A newcomer with no patience does not jump the line when the slot is freed.
        drop(held);
        assert!(slots.acquire_within(Duration::ZERO).is_none());
        assert_eq!(rx.recv().expect("one got it"), "first");
        assert_eq!(rx.recv().expect("then the other"), "second");
        for w in waiters {
            w.join().expect("join");
        }
        assert_eq!(slots.waiting(), 0);
    }

    #[test]
    fn a_call_gives_up_waiting_for_a_slot_after_its_patience() {
        let slots = Arc::new(CallSlots::new(Some(1)));
        let held = slots.acquire_within(LONG).expect("a free slot");
        let started = Instant::now();
        assert!(slots.acquire_within(Duration::from_millis(100)).is_none());
        assert!(started.elapsed() >= Duration::from_millis(100));
        drop(held);
        assert!(slots.acquire_within(Duration::ZERO).is_some());
    }
}
