//! The finishers: a bounded pool of threads that run the work of ending a
//! session (CWA sign-out, the device's last message, registry and audit),
//! so that ending thousands of sessions at once (shutdown, a storm of
//! evictions) needs at most [`Finishers::max_threads`] threads instead of
//! one per session, and the unit's `TasksMax` holds.
//!
//! Jobs wait in a queue (bounded by the session table: one job per ended
//! session). A thread is started when a job arrives and none is idle, up
//! to the bound; an idle thread gives its stack pages back and exits after
//! [`IDLE_EXIT`] without work, owing the process a heap trim (see
//! [`crate::ops::memory`]): what its thread-locals held (OpenSSL's
//! per-thread state among them) is freed only as it exits, and while they
//! lived those few blocks kept whole pages of freed session memory
//! resident (measured with `tests/load.rs` after 1,000 HTTPS sessions
//! ended: 32 finishers idling for 10 s kept 2.5 MiB resident that a trim
//! after their exit returned).

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use crate::ops::memory;

/// How long a finisher thread waits for work before it exits: long enough
/// to carry a burst of session ends that arrive in waves, short enough
/// that a burst's memory goes back within seconds (a thread costs tens of
/// microseconds to start again).
pub const IDLE_EXIT: Duration = Duration::from_secs(2);

type Job = Box<dyn FnOnce() + Send>;

struct Queue {
    jobs: VecDeque<Job>,
    threads: usize,
    idle: usize,
}

struct Inner {
    queue: Mutex<Queue>,
    ready: Condvar,
    max_threads: usize,
    stack_size: usize,
}

/// The pool (cheap to clone).
#[derive(Clone)]
pub struct Finishers(Arc<Inner>);

impl std::fmt::Debug for Finishers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let q = self.queue();
        f.debug_struct("Finishers")
            .field("queued", &q.jobs.len())
            .field("threads", &q.threads)
            .field("max_threads", &self.0.max_threads)
            .finish()
    }
}

impl Finishers {
    /// A pool of at most `max_threads` threads (at least one) of
    /// `stack_size` bytes each.
    pub fn new(max_threads: usize, stack_size: usize) -> Finishers {
        Finishers(Arc::new(Inner {
            queue: Mutex::new(Queue {
                jobs: VecDeque::new(),
                threads: 0,
                idle: 0,
            }),
            ready: Condvar::new(),
            max_threads: max_threads.max(1),
            stack_size,
        }))
    }

    /// The bound on threads.
    pub fn max_threads(&self) -> usize {
        self.0.max_threads
    }

    /// Threads running now.
    pub fn threads(&self) -> usize {
        self.queue().threads
    }

    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.0.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Run `job` on a finisher thread. If no thread can be started and
    /// none is running, it runs on the calling thread.
    pub fn run(&self, job: impl FnOnce() + Send + 'static) {
        let mut q = self.queue();
        q.jobs.push_back(Box::new(job));
        if q.idle > 0 || q.threads >= self.0.max_threads {
            drop(q);
            self.0.ready.notify_one();
            return;
        }
        q.threads += 1;
        drop(q);
        let pool = self.clone();
        let spawned = std::thread::Builder::new()
            .name("session-end".into())
            .stack_size(self.0.stack_size)
            .spawn(move || pool.work());
        if let Err(e) = spawned {
            let mut q = self.queue();
            q.threads -= 1;
            let alone = q.threads == 0;
            let job = if alone { q.jobs.pop_back() } else { None };
            drop(q);
            match job {
                Some(job) => {
                    log::warn!("cannot start a finisher thread ({e}); finishing inline");
                    job();
                }
                None => log::warn!("cannot start a finisher thread ({e}); queued"),
            }
        }
    }

    fn work(&self) {
        let mut q = self.queue();
        loop {
            if let Some(job) = q.jobs.pop_front() {
                drop(q);
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
                    log::error!("a session-end job panicked");
                }
                q = self.queue();
                continue;
            }
            // Idle: the deep work of the last job need not stay resident.
            drop(q);
            memory::release_idle_memory();
            q = self.queue();
            if !q.jobs.is_empty() {
                continue;
            }
            q.idle += 1;
            let (guard, waited) = self
                .0
                .ready
                .wait_timeout_while(q, IDLE_EXIT, |q| q.jobs.is_empty())
                .unwrap_or_else(|p| p.into_inner());
            q = guard;
            q.idle -= 1;
            if waited.timed_out() {
                q.threads -= 1;
                drop(q);
                // This thread's thread-locals are freed after this line,
                // as it exits: a later trim (the reaper's tick) returns
                // the pages they kept.
                memory::owe_trim();
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;

    #[test]
    fn a_thousand_jobs_run_on_at_most_the_bounded_threads() {
        let pool = Finishers::new(4, 128 * 1024);
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = mpsc::channel();
        for _ in 0..1000 {
            let (running, most, tx) = (Arc::clone(&running), Arc::clone(&most), tx.clone());
            pool.run(move || {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                std::thread::sleep(Duration::from_micros(100));
                running.fetch_sub(1, Ordering::SeqCst);
                tx.send(()).unwrap();
            });
            assert!(pool.threads() <= 4);
        }
        for _ in 0..1000 {
            rx.recv_timeout(Duration::from_secs(30)).unwrap();
        }
        assert!(most.load(Ordering::SeqCst) <= 4);
        assert!(pool.threads() <= 4);
    }
}
