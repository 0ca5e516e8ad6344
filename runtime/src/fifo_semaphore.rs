//! A counting semaphore for blocking threads that serves its waiters first come, first served.
//!
//! Every bounded place in the host — a run's worker slot, a plugin call's instance slot, a place
//! in a model's generation queue, a remote model's generation in flight — is one of these. A
//! freed permit goes to the caller that has waited longest, not to whichever thread wakes
//! first, and a caller that will not wait ([`FifoSemaphore::try_acquire`]) never takes a permit
//! while others wait for one: otherwise a steady stream of newcomers could overtake an old
//! waiter again and again until its deadline. A caller may take several permits at once
//! ([`FifoSemaphore::acquire_many`], a plugin call's megabytes of memory): it still waits its
//! turn, and those behind it wait until it has them.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How often a waiter looks at its cancellation flag, which nothing signals.
const CANCEL_POLL: Duration = Duration::from_millis(50);

pub struct FifoSemaphore {
    state: Mutex<State>,
    freed: Condvar,
}

struct State {
    free: usize,
    /// Tickets of the callers waiting, oldest first, with how many permits each wants.
    waiting: VecDeque<(u64, usize)>,
    next_ticket: u64,
}

/// Why a caller stopped waiting without a permit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GaveUp {
    Deadline,
    Cancelled,
}

/// Taken permits (one, or a caller's several), given back when dropped.
pub struct Permit(Arc<FifoSemaphore>, usize);

/// A place in a semaphore's line ([`FifoSemaphore::line_up`]).
pub struct Place {
    semaphore: Arc<FifoSemaphore>,
    held: Held,
}

enum Held {
    /// A permit was free when the place was taken.
    Permit(Permit),
    /// In line for this many permits.
    Ticket(u64, usize),
    /// Waited on: nothing left to give back.
    Spent,
}

impl Place {
    /// The permit of this place: at once if it already has one, else when its turn comes,
    /// unless `deadline` passes or `cancel` is set first. A place already cancelled gets none,
    /// even with a permit in hand (which goes back).
    pub fn wait(
        mut self,
        deadline: Option<Instant>,
        cancel: Option<&AtomicBool>,
    ) -> Result<Permit, GaveUp> {
        match std::mem::replace(&mut self.held, Held::Spent) {
            Held::Permit(permit) => {
                if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
                    return Err(GaveUp::Cancelled);
                }
                Ok(permit)
            }
            Held::Ticket(ticket, count) => {
                self.semaphore.wait_in_line(ticket, count, deadline, cancel)
            }
            Held::Spent => Err(GaveUp::Cancelled),
        }
    }
}

impl Place {
    /// The ticket this place waits with (`None`: it had a permit at once, or has waited).
    pub fn ticket(&self) -> Option<u64> {
        match self.held {
            Held::Ticket(ticket, _) => Some(ticket),
            Held::Permit(_) | Held::Spent => None,
        }
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        // A permit held goes back by its own drop.
        if let Held::Ticket(ticket, _) = self.held {
            self.semaphore.leave_line(ticket);
        }
    }
}

impl std::fmt::Debug for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Place")
    }
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Permit")
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.lock().free += self.1;
        // Every waiter looks: only the first in line takes it.
        self.0.freed.notify_all();
    }
}

impl FifoSemaphore {
    /// A semaphore with `permits` permits (`usize::MAX`: as good as unbounded).
    pub fn new(permits: usize) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                free: permits,
                waiting: VecDeque::new(),
                next_ticket: 0,
            }),
            freed: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Only counters and tickets live here, each changed in one statement.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A permit now, if one is free and nobody waits for one.
    pub fn try_acquire(self: &Arc<Self>) -> Option<Permit> {
        let mut state = self.lock();
        if state.free > 0 && state.waiting.is_empty() {
            state.free -= 1;
            return Some(Permit(self.clone(), 1));
        }
        None
    }

    /// A permit in turn: wait in line until one is free for this caller, unless `deadline`
    /// passes or `cancel` is set first (looked at every [`CANCEL_POLL`]). A caller already
    /// cancelled gets none, even with one free.
    pub fn acquire(
        self: &Arc<Self>,
        deadline: Option<Instant>,
        cancel: Option<&AtomicBool>,
    ) -> Result<Permit, GaveUp> {
        self.acquire_many(1, deadline, cancel)
    }

    /// `count` permits together, in turn (see [`FifoSemaphore::acquire`]). More than the
    /// semaphore was made with is never free: ask for at most that.
    pub fn acquire_many(
        self: &Arc<Self>,
        count: usize,
        deadline: Option<Instant>,
        cancel: Option<&AtomicBool>,
    ) -> Result<Permit, GaveUp> {
        if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
            return Err(GaveUp::Cancelled);
        }
        self.line_up_for(count).wait(deadline, cancel)
    }

    /// A place in line taken now, to wait on later ([`Place::wait`]), perhaps on another
    /// thread: places are served in the order they were taken, whichever thread waits first.
    /// A place dropped unused leaves the line (or gives its permit back).
    pub fn line_up(self: &Arc<Self>) -> Place {
        self.line_up_for(1)
    }

    /// A place in line for `count` permits together.
    fn line_up_for(self: &Arc<Self>, count: usize) -> Place {
        let mut state = self.lock();
        if state.free >= count && state.waiting.is_empty() {
            state.free -= count;
            return Place {
                semaphore: self.clone(),
                held: Held::Permit(Permit(self.clone(), count)),
            };
        }
        let ticket = state.next_ticket;
        state.next_ticket += 1;
        state.waiting.push_back((ticket, count));
        Place {
            semaphore: self.clone(),
            held: Held::Ticket(ticket, count),
        }
    }

    /// Wait with `ticket`, in line, for a permit (see [`FifoSemaphore::acquire`]).
    fn wait_in_line(
        self: &Arc<Self>,
        ticket: u64,
        count: usize,
        deadline: Option<Instant>,
        cancel: Option<&AtomicBool>,
    ) -> Result<Permit, GaveUp> {
        let cancelled = || cancel.is_some_and(|c| c.load(Ordering::Relaxed));
        let mut state = self.lock();
        loop {
            // A cancel is looked at before a free permit (a cancelled run must not start), the
            // deadline after (a permit freed as it comes is still taken).
            let cancelled = cancelled();
            if !cancelled
                && state.free >= count
                && state.waiting.front().is_some_and(|(t, _)| *t == ticket)
            {
                state.waiting.pop_front();
                state.free -= count;
                // Another permit may be free for the next in line.
                self.freed.notify_all();
                return Ok(Permit(self.clone(), count));
            }
            let why = if cancelled {
                Some(GaveUp::Cancelled)
            } else if deadline.is_some_and(|d| Instant::now() >= d) {
                Some(GaveUp::Deadline)
            } else {
                None
            };
            if let Some(why) = why {
                // Out of the line, which may put a caller that can have a free permit first.
                state.waiting.retain(|(t, _)| *t != ticket);
                self.freed.notify_all();
                return Err(why);
            }
            let mut pause = CANCEL_POLL;
            if let Some(deadline) = deadline {
                pause = pause.min(deadline.saturating_duration_since(Instant::now()));
            }
            state = self
                .freed
                .wait_timeout(state, pause)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }

    /// Take `ticket` out of the line (its holder stopped waiting), which may put a caller that
    /// can have a free permit first.
    fn leave_line(&self, ticket: u64) {
        self.lock().waiting.retain(|(t, _)| *t != ticket);
        self.freed.notify_all();
    }

    /// How many callers wait ahead of `ticket` (0: it is next), while it waits.
    pub fn ahead_of(&self, ticket: u64) -> Option<usize> {
        self.lock().waiting.iter().position(|(t, _)| *t == ticket)
    }

    /// How many callers wait in line.
    pub fn waiting(&self) -> usize {
        self.lock().waiting.len()
    }

    /// How many permits are free now.
    pub fn available(&self) -> usize {
        self.lock().free
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    const LONG: Duration = Duration::from_secs(60);

    fn in_a_while() -> Option<Instant> {
        Some(Instant::now() + LONG)
    }

    /// Start a thread that waits for a permit, and return once `in_line` callers (it among
    /// them) stand in line.
    fn queue_up(
        sem: &Arc<FifoSemaphore>,
        name: &'static str,
        got: &mpsc::Sender<&'static str>,
        in_line: usize,
    ) -> std::thread::JoinHandle<()> {
        let (theirs, got) = (sem.clone(), got.clone());
        let waiter = std::thread::spawn(move || {
            let permit = theirs
                .acquire(in_a_while(), None)
                .expect("a permit in turn");
            got.send(name).expect("send");
            // Held until the test has seen who got it.
            std::thread::sleep(Duration::from_millis(30));
            drop(permit);
        });
        while sem.waiting() < in_line {
            std::thread::sleep(Duration::from_millis(1));
        }
        waiter
    }

    /// The next name, or a failure (not a hang) when a waiter never got its permit.
    fn next(rx: &mpsc::Receiver<&'static str>) -> &'static str {
        rx.recv_timeout(LONG).expect("a waiter got its permit")
    }

    #[test]
    fn places_are_served_in_the_order_taken_whichever_thread_waits_first() {
        let sem = FifoSemaphore::new(1);
        let first = sem.line_up();
        let (second, third) = (sem.line_up(), sem.line_up());
        assert_eq!(sem.waiting(), 2);
        assert_eq!(first.ticket(), None, "it had the permit at once");
        let ahead = |place: &Place| place.ticket().and_then(|t| sem.ahead_of(t));
        assert_eq!((ahead(&second), ahead(&third)), (Some(0), Some(1)));
        let (tx, rx) = mpsc::channel();
        // The third place's thread starts waiting before the second's.
        let waiters: Vec<_> = [("third", third), ("second", second)]
            .into_iter()
            .map(|(name, place)| {
                let tx = tx.clone();
                let waiter = std::thread::spawn(move || {
                    let permit = place.wait(in_a_while(), None).expect("a permit in turn");
                    tx.send(name).expect("send");
                    std::thread::sleep(Duration::from_millis(30));
                    drop(permit);
                });
                std::thread::sleep(Duration::from_millis(20));
                waiter
            })
            .collect();
        drop(first.wait(None, None).expect("the free permit"));
        assert_eq!(next(&rx), "second");
        assert_eq!(next(&rx), "third");
        for w in waiters {
            w.join().expect("join");
        }
        // A place given up unused leaves the line.
        let held = sem.try_acquire().expect("free again");
        let unused = sem.line_up();
        assert_eq!(sem.waiting(), 1);
        drop(unused);
        assert_eq!(sem.waiting(), 0);
        drop(held);
        assert_eq!(sem.available(), 1);
    }

    #[test]
    fn a_freed_permit_goes_to_the_caller_that_waited_longest() {
        let sem = FifoSemaphore::new(1);
        let held = sem.try_acquire().expect("a free permit");
        let (tx, rx) = mpsc::channel();
        let waiters: Vec<_> = ["first", "second", "third"]
            .into_iter()
            .enumerate()
            .map(|(i, name)| queue_up(&sem, name, &tx, i + 1))
            .collect();
        assert!(
            rx.recv_timeout(Duration::from_millis(100)).is_err(),
            "a waiter got a permit while the only one was taken"
        );
        drop(held);
        // A newcomer that will not wait does not jump the line, even with the permit free.
        assert!(sem.try_acquire().is_none());
        for expected in ["first", "second", "third"] {
            assert_eq!(next(&rx), expected);
        }
        for w in waiters {
            w.join().expect("join");
        }
        assert_eq!((sem.waiting(), sem.available()), (0, 1));
        assert!(sem.try_acquire().is_some());
    }

    #[test]
    fn a_waiter_gives_up_at_its_deadline_or_cancel_and_leaves_the_line() {
        let sem = FifoSemaphore::new(1);
        let held = sem.try_acquire().expect("a free permit");
        let started = Instant::now();
        let soon = Some(started + Duration::from_millis(80));
        assert_eq!(sem.acquire(soon, None).err(), Some(GaveUp::Deadline));
        assert!(started.elapsed() >= Duration::from_millis(80));
        assert_eq!(sem.waiting(), 0);

        let cancel = Arc::new(AtomicBool::new(false));
        let (theirs, flag) = (sem.clone(), cancel.clone());
        let waiter = std::thread::spawn(move || theirs.acquire(None, Some(&flag)).err());
        while sem.waiting() == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        cancel.store(true, Ordering::Relaxed);
        assert_eq!(waiter.join().expect("join"), Some(GaveUp::Cancelled));
        assert_eq!(sem.waiting(), 0);
        drop(held);
        assert_eq!(sem.available(), 1);
        // Already cancelled: no permit, even a free one.
        assert_eq!(
            sem.acquire(None, Some(&cancel)).err(),
            Some(GaveUp::Cancelled)
        );
        assert_eq!(sem.available(), 1);
    }

    #[test]
    fn a_waiter_that_gave_up_does_not_hold_up_the_line_behind_it() {
        let sem = FifoSemaphore::new(1);
        let held = sem.try_acquire().expect("a free permit");
        // First in line, with a near deadline; then one that waits long.
        let (theirs, near) = (sem.clone(), Instant::now() + Duration::from_millis(500));
        let impatient = std::thread::spawn(move || theirs.acquire(Some(near), None).err());
        while sem.waiting() == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        let (tx, rx) = mpsc::channel();
        let patient = queue_up(&sem, "patient", &tx, 2);
        assert_eq!(impatient.join().expect("join"), Some(GaveUp::Deadline));
        drop(held);
        assert_eq!(next(&rx), "patient");
        patient.join().expect("join");
    }

    #[test]
    fn several_permits_are_taken_together_in_turn() {
        let sem = FifoSemaphore::new(10);
        let six = sem
            .acquire_many(6, None, None)
            .expect("six of ten, at once");
        assert_eq!(sem.available(), 4);
        // Five do not fit: that caller waits, and a newcomer wanting one waits behind it.
        let (tx, rx) = mpsc::channel();
        let (theirs, five_tx) = (sem.clone(), tx.clone());
        let five = std::thread::spawn(move || {
            let permit = theirs
                .acquire_many(5, in_a_while(), None)
                .expect("five in turn");
            five_tx.send("five").expect("send");
            std::thread::sleep(Duration::from_millis(30));
            drop(permit);
        });
        while sem.waiting() < 1 {
            std::thread::sleep(Duration::from_millis(1));
        }
        let one = queue_up(&sem, "one", &tx, 2);
        assert!(sem.try_acquire().is_none(), "a newcomer jumped the line");
        assert!(rx.recv_timeout(Duration::from_millis(100)).is_err());
        // Both fit once the six are back (in either order of their messages).
        drop(six);
        let mut got = [next(&rx), next(&rx)];
        got.sort_unstable();
        assert_eq!(got, ["five", "one"]);
        five.join().expect("join");
        one.join().expect("join");
        assert_eq!((sem.waiting(), sem.available()), (0, 10));
        // Giving up leaves the line with all it asked for.
        let held = sem.acquire_many(10, None, None).expect("all ten");
        let soon = Some(Instant::now() + Duration::from_millis(50));
        assert_eq!(
            sem.acquire_many(3, soon, None).err(),
            Some(GaveUp::Deadline)
        );
        assert_eq!(sem.waiting(), 0);
        drop(held);
        assert_eq!(sem.available(), 10);
    }

    #[test]
    fn without_waiters_permits_are_taken_until_none_is_free() {
        let sem = FifoSemaphore::new(2);
        let a = sem.try_acquire().expect("first");
        let b = sem.acquire(None, None).expect("second, at once");
        assert!(sem.try_acquire().is_none());
        drop(a);
        let _c = sem.try_acquire().expect("the one given back");
        drop(b);
        let unbounded = FifoSemaphore::new(usize::MAX);
        let many: Vec<_> = (0..100).map(|_| unbounded.try_acquire()).collect();
        assert!(many.iter().all(Option::is_some));
    }
}
