//! The engine's worker threads: one rayon pool for every model, sized to the machine's cores
//! (or `AGENTRT_THREADS`).
//!
//! A whole forward pass runs inside the pool ([`run`]), so the matmuls, attention and norms of
//! a step are rayon jobs on threads that are already awake; called from outside, every one of
//! the few hundred parallel operations of a step would hand its work to the pool and put the
//! calling thread to sleep and wake it again.

use std::sync::OnceLock;

/// The pool, built on first use.
pub fn pool() -> &'static rayon::ThreadPool {
    static POOL: OnceLock<rayon::ThreadPool> = OnceLock::new();
    POOL.get_or_init(|| {
        let threads = std::env::var("AGENTRT_THREADS")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|n| *n > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("agentrt-engine-{i}"))
            .build()
            // Building only fails when the OS refuses threads; run on the caller's then.
            .unwrap_or_else(|_| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(1)
                    .use_current_thread()
                    .build()
                    .expect("a one-thread pool on the current thread")
            })
    })
}

/// Threads the engine computes with.
pub fn count() -> usize {
    pool().current_num_threads()
}

/// Run `f` (a forward pass) on the pool.
pub fn run<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    pool().install(f)
}
