//! The engine's worker threads: a fixed team that splits each operation of a forward pass
//! (a matmul's rows, attention's heads, the norms' and activations' rows, each sequence's
//! rotary embedding and cache append) across the cores.
//!
//! A decode step is a few hundred operations of some tens of microseconds each. A general pool
//! puts idle threads to sleep between them and pays a futex wake-up per operation, which on a
//! small model is a quarter of the step. The team's workers instead spin between operations
//! for a short while (then park), and the calling thread works too. Each participant owns a
//! contiguous share of an operation's tasks and runs it in order (a thread streams one run of
//! weight rows, the hardware prefetcher's best case), then takes what is left of the others'
//! shares from their ends (so a thread that was descheduled or is slower holds up only the
//! tasks it has started; a matmul's share is one task, so that helps only a thread that has
//! not started yet). Sized to the machine's cores, or `AGENTRT_THREADS`.
//!
//! Safety protocol: a job is a borrowed closure published under a generation number. A worker
//! announces itself in `active` before it checks that the job is still open; the caller closes
//! the job when all tasks are claimed and done, then waits until `active` is zero. So no worker
//! touches a closure after `parallel_for` returns (tested below, under panics too).

use std::cell::{Cell, UnsafeCell};
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;

/// How long an idle worker spins before it parks.
const SPIN: Duration = Duration::from_micros(300);

type Job = *const (dyn Fn(usize) + Sync);

struct Shared {
    /// Bumped to publish a job.
    generation: AtomicUsize,
    /// The generation whose job no worker may start any more.
    closed: AtomicUsize,
    /// Workers inside the current job.
    active: AtomicUsize,
    /// Per participant (the caller first, then each worker): the tasks of its share not yet
    /// claimed, `front | back << 32`. Each runs its own share front to back, then takes what
    /// is left of the others' from their backs. Each on a cache line of its own: side by
    /// side, every claim of one thread took the line from the other.
    shares: Vec<CachePadded<AtomicU64>>,
    /// The job's closure; written only while no worker can read it (see the module docs).
    job: UnsafeCell<Option<Job>>,
    /// A task panicked on a worker.
    panicked: AtomicBool,
    /// Per worker: parked (or about to park) and needs an unpark to see a new job.
    sleeping: Vec<AtomicBool>,
}

// SAFETY: `job` is written by the one thread holding the team's lock before it publishes the
// generation (Release) and read by workers after they observe it (Acquire) and before they
// leave `active`; the caller does not return (or write again) until `active` is zero.
unsafe impl Sync for Shared {}
unsafe impl Send for Shared {}

struct Team {
    shared: &'static Shared,
    workers: Vec<JoinHandle<()>>,
    /// One job at a time (two models generating at once take turns per operation).
    lock: Mutex<()>,
}

thread_local! {
    /// Set on team workers and on a caller inside a job: nested calls run inline.
    static IN_JOB: Cell<bool> = const { Cell::new(false) };
}

fn team() -> &'static Team {
    static TEAM: OnceLock<Team> = OnceLock::new();
    TEAM.get_or_init(|| {
        let threads = crate::settings::count("AGENTRT_THREADS")
            .unwrap_or_else(|| thread::available_parallelism().map_or(1, |n| n.get()));
        let helpers = threads - 1;
        let shared: &'static Shared = Box::leak(Box::new(Shared {
            generation: AtomicUsize::new(0),
            closed: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            shares: (0..threads)
                .map(|_| CachePadded::new(AtomicU64::new(0)))
                .collect(),
            job: UnsafeCell::new(None),
            panicked: AtomicBool::new(false),
            sleeping: (0..helpers).map(|_| AtomicBool::new(false)).collect(),
        }));
        // Workers stay numbered 0..k (each wakes through its own `sleeping` flag): the first
        // one that cannot start ends the team there, and the shares of the missing ones are
        // taken by the others.
        let mut workers = Vec::with_capacity(helpers);
        for i in 0..helpers {
            let spawned = thread::Builder::new()
                .name(format!("agentrt-engine-{}", i + 1))
                .spawn(move || worker(shared, i));
            match spawned {
                Ok(handle) => workers.push(handle),
                Err(e) => {
                    tracing::warn!(
                        "engine thread {} of {threads} could not start ({e}); computing with {}",
                        i + 2,
                        i + 1
                    );
                    break;
                }
            }
        }
        Team {
            shared,
            workers,
            lock: Mutex::new(()),
        }
    })
}

fn worker(shared: &'static Shared, index: usize) {
    IN_JOB.with(|f| f.set(true));
    let mut seen = 0usize;
    loop {
        // Wait for a new generation: spin, then park.
        let mut since = Instant::now();
        let generation = loop {
            let g = shared.generation.load(Ordering::Acquire);
            if g != seen {
                break g;
            }
            if since.elapsed() < SPIN {
                for _ in 0..64 {
                    std::hint::spin_loop();
                }
                continue;
            }
            shared.sleeping[index].store(true, Ordering::SeqCst);
            if shared.generation.load(Ordering::SeqCst) == seen {
                thread::park();
            }
            shared.sleeping[index].store(false, Ordering::SeqCst);
            since = Instant::now();
        };
        shared.active.fetch_add(1, Ordering::SeqCst);
        // Re-read: the generation seen above may be long closed, and a newer one published.
        let current = shared.generation.load(Ordering::SeqCst);
        if shared.closed.load(Ordering::SeqCst) != current {
            // SAFETY: job `current` was published (its closure written before the generation)
            // and not yet closed when we were already counted in `active`, so its caller waits
            // for us before returning: the closure is alive.
            let job = unsafe { (*shared.job.get()).expect("a published job") };
            let f = unsafe { &*job };
            run_tasks(shared, f, index + 1);
        }
        seen = current.max(generation);
        shared.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Claim and run tasks until none are left: participant `me`'s own share in order (so a
/// thread's tasks are one contiguous run, e.g. of weight rows, as long as nobody is behind),
/// then the others' leftovers from their ends. A panic is recorded, not propagated, so the
/// protocol completes.
fn run_tasks(shared: &Shared, f: &(dyn Fn(usize) + Sync), me: usize) {
    let run = |t: usize| {
        if catch_unwind(AssertUnwindSafe(|| f(t))).is_err() {
            shared.panicked.store(true, Ordering::SeqCst);
        }
    };
    while let Some(t) = claim(&shared.shares[me], true) {
        run(t);
    }
    let n = shared.shares.len();
    for other in (1..n).map(|k| (me + k) % n) {
        while let Some(t) = claim(&shared.shares[other], false) {
            run(t);
        }
    }
}

/// Take the first (`front`) or last task of a share, if any is left.
fn claim(share: &AtomicU64, front: bool) -> Option<usize> {
    let mut current = share.load(Ordering::Acquire);
    loop {
        let (first, end) = (current & 0xffff_ffff, current >> 32);
        if first >= end {
            return None;
        }
        let (next, task) = if front {
            (current + 1, first)
        } else {
            (current - (1 << 32), end - 1)
        };
        match share.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return Some(task as usize),
            Err(seen) => current = seen,
        }
    }
}

/// Threads the engine computes with.
pub fn count() -> usize {
    team().workers.len() + 1
}

/// Run `f(0) .. f(tasks - 1)` across the team, the calling thread included; returns when all
/// have run. A panic in any task is re-raised here after every task has finished.
pub fn parallel_for(tasks: usize, f: impl Fn(usize) + Sync) {
    let team = team();
    if tasks <= 1 || team.workers.is_empty() || IN_JOB.with(|j| j.get()) {
        (0..tasks).for_each(f);
        return;
    }
    // Shares pack task indices into 32 bits each.
    assert!(
        tasks <= u32::MAX as usize,
        "parallel_for: {tasks} tasks is more than a share can index"
    );
    let _turn = team.lock.lock().unwrap_or_else(|e| e.into_inner());
    let shared = team.shared;
    let f: &(dyn Fn(usize) + Sync) = &f;
    // SAFETY: the lifetime is erased only for the duration of this call; the protocol (module
    // docs) guarantees no worker dereferences it after we return.
    let job: Job = unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), Job>(f) };
    // SAFETY: no worker reads `job` now: the previous job was closed with `active` at zero,
    // and the new generation is not yet published.
    unsafe { *shared.job.get() = Some(job) };
    // Contiguous shares, the caller's first.
    let participants = shared.shares.len();
    for (p, share) in shared.shares.iter().enumerate() {
        let (first, end) = (tasks * p / participants, tasks * (p + 1) / participants);
        share.store(first as u64 | (end as u64) << 32, Ordering::Relaxed);
    }
    shared.panicked.store(false, Ordering::Relaxed);
    let generation = shared.generation.fetch_add(1, Ordering::SeqCst) + 1;
    for (worker, sleeping) in team.workers.iter().zip(&shared.sleeping) {
        if sleeping.load(Ordering::SeqCst) {
            worker.thread().unpark();
        }
    }
    IN_JOB.with(|j| j.set(true));
    run_tasks(shared, f, 0);
    IN_JOB.with(|j| j.set(false));
    shared.closed.store(generation, Ordering::SeqCst);
    while shared.active.load(Ordering::SeqCst) != 0 {
        std::hint::spin_loop();
    }
    if shared.panicked.load(Ordering::SeqCst) {
        resume_unwind(Box::new("a task of a parallel engine operation panicked"));
    }
}

/// A raw slice pointer handed to tasks that each write a disjoint part of it.
struct SharedSlice<T>(*mut T, usize);

// SAFETY: tasks only form disjoint sub-slices (see `for_each_chunk_mut`).
unsafe impl<T: Send> Sync for SharedSlice<T> {}

impl<T> SharedSlice<T> {
    /// Elements `start..end`.
    ///
    /// # Safety
    /// The range is inside the slice, and no other live reference overlaps it.
    #[allow(clippy::mut_from_ref)]
    unsafe fn range(&self, start: usize, end: usize) -> &mut [T] {
        debug_assert!(start <= end && end <= self.1);
        // SAFETY: guaranteed by the caller.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(start), end - start) }
    }
}

/// Run `f(index, chunk)` for each `chunk_len`-long chunk of `data` (the last may be shorter)
/// across the team.
pub fn for_each_chunk_mut<T: Send>(
    data: &mut [T],
    chunk_len: usize,
    f: impl Fn(usize, &mut [T]) + Sync,
) {
    let chunk_len = chunk_len.max(1);
    let len = data.len();
    let chunks = len.div_ceil(chunk_len);
    let base = SharedSlice(data.as_mut_ptr(), len);
    let base = &base;
    parallel_for(chunks, |i| {
        let start = i * chunk_len;
        let end = (start + chunk_len).min(len);
        // SAFETY: chunk i covers [start, end), disjoint from every other chunk and inside the
        // slice; `data` stays mutably borrowed for the whole call.
        let chunk = unsafe { base.range(start, end) };
        f(i, chunk);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_once_and_chunks_are_disjoint() {
        for round in 0..200 {
            let n = 1 + round % 37;
            let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            parallel_for(n, |t| {
                hits[t].fetch_add(1, Ordering::Relaxed);
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
        }
        let mut data = vec![0usize; 1001];
        for_each_chunk_mut(&mut data, 10, |i, chunk| {
            for v in chunk.iter_mut() {
                *v += i + 1;
            }
        });
        assert!(data.iter().enumerate().all(|(j, v)| *v == j / 10 + 1));
    }

    #[test]
    fn a_share_is_taken_from_its_front_by_its_owner_and_from_its_back_by_others() {
        let share = AtomicU64::new(3 | 7 << 32);
        assert_eq!(claim(&share, true), Some(3));
        assert_eq!(claim(&share, false), Some(6));
        assert_eq!(claim(&share, true), Some(4));
        assert_eq!(claim(&share, false), Some(5));
        assert_eq!(claim(&share, true), None);
        assert_eq!(claim(&share, false), None);
    }

    #[test]
    fn a_panicking_task_is_reported_after_the_others_finish() {
        let done = AtomicUsize::new(0);
        let result = catch_unwind(AssertUnwindSafe(|| {
            parallel_for(16, |t| {
                if t == 3 {
                    panic!("task 3 fails");
                }
                done.fetch_add(1, Ordering::Relaxed);
            })
        }));
        assert!(result.is_err());
        assert_eq!(done.load(Ordering::Relaxed), 15);
        // The team still works afterwards.
        let total = AtomicUsize::new(0);
        parallel_for(8, |t| {
            total.fetch_add(t, Ordering::Relaxed);
        });
        assert_eq!(total.load(Ordering::Relaxed), 28);
    }

    #[test]
    fn nested_calls_run_inline() {
        let total = AtomicUsize::new(0);
        parallel_for(4, |_| {
            parallel_for(4, |_| {
                total.fetch_add(1, Ordering::Relaxed);
            })
        });
        assert_eq!(total.load(Ordering::Relaxed), 16);
    }
}
