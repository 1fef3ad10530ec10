//! The machine check beside the latency figure: how often a CPU of this
//! machine is unavailable to a thread that asks for it. One probe thread
//! pinned to each CPU sleeps 1 ms at a time and counts the wakes that come
//! more than [`LATE`] after they were due; with the load otherwise at rest
//! (the idle fleet signed in, no messages yet) a late wake is the machine
//! itself: its own agents, or, in a virtual machine, a virtual CPU the host
//! did not run. A message whose thread is woken onto such a CPU waits out
//! the stall, so a latency tail is read beside this figure (README,
//! Performance).

use std::thread;
use std::time::{Duration, Instant};

/// A wake later than this counts as a stall: beyond the 3 ms p99 target's
/// reach from a 1 ms median, and well above timer slack.
pub const LATE: Duration = Duration::from_millis(2);

/// How long each probe sleeps per round.
const NAP: Duration = Duration::from_millis(1);

/// What the probes saw, all CPUs together.
pub struct StallReport {
    /// How long the probes ran.
    pub elapsed: Duration,
    /// CPUs probed (those this process may run on).
    pub cpus: usize,
    /// Wakes later than [`LATE`].
    pub late: usize,
    /// The time those wakes came late by, summed.
    pub late_total: Duration,
    /// The latest wake.
    pub worst: Duration,
}

impl StallReport {
    /// Late wakes per second, all CPUs together.
    pub fn late_per_second(&self) -> f64 {
        self.late as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The share of CPU time spent in stalls, in percent (the time late
    /// wakes were late by, over the probes' time on all CPUs).
    pub fn stalled_percent(&self) -> f64 {
        100.0 * self.late_total.as_secs_f64()
            / (self.elapsed.as_secs_f64() * self.cpus.max(1) as f64).max(1e-9)
    }
}

impl std::fmt::Display for StallReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} wakes later than {} ms in {:.1} s on {} CPUs ({:.1}/s, {:.2}% of CPU time), worst {:.1} ms",
            self.late,
            LATE.as_millis(),
            self.elapsed.as_secs_f64(),
            self.cpus,
            self.late_per_second(),
            self.stalled_percent(),
            self.worst.as_secs_f64() * 1e3
        )
    }
}

/// The CPUs this process may run on.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: `set` is a plain bit set owned by this frame; the call only
    // writes into it, within its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return vec![];
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

/// Pins the calling thread to `cpu`; false if the system refused.
fn pin_to(cpu: usize) -> bool {
    // SAFETY: as in `allowed_cpus`; pid 0 is the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

/// Probes every CPU for `duration`; None if a probe could not be pinned
/// (an unpinned probe may follow the scheduler to the other CPU and
/// leave the stalled one unwatched).
pub fn probe(duration: Duration) -> Option<StallReport> {
    let cpus = allowed_cpus();
    let started = Instant::now();
    let probes: Vec<_> = cpus
        .iter()
        .map(|&cpu| {
            thread::Builder::new()
                .name(format!("stall-probe-{cpu}"))
                .stack_size(64 * 1024)
                .spawn(move || {
                    if !pin_to(cpu) {
                        return None;
                    }
                    let (mut late, mut late_total, mut worst) = (0, Duration::ZERO, Duration::ZERO);
                    let end = Instant::now() + duration;
                    loop {
                        let asked = Instant::now();
                        if asked >= end {
                            break;
                        }
                        thread::sleep(NAP);
                        let overshoot = asked.elapsed().saturating_sub(NAP);
                        if overshoot > LATE {
                            late += 1;
                            late_total += overshoot;
                        }
                        worst = worst.max(overshoot);
                    }
                    Some((late, late_total, worst))
                })
        })
        .collect();
    let mut report = StallReport {
        elapsed: Duration::ZERO,
        cpus: cpus.len(),
        late: 0,
        late_total: Duration::ZERO,
        worst: Duration::ZERO,
    };
    for p in probes {
        let (late, late_total, worst) = p.ok()?.join().ok()??;
        report.late += late;
        report.late_total += late_total;
        report.worst = report.worst.max(worst);
    }
    report.elapsed = started.elapsed();
    (report.cpus > 0).then_some(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_pins_a_thread_to_every_allowed_cpu_and_reports_for_all() {
        let allowed = allowed_cpus();
        assert!(!allowed.is_empty(), "sched_getaffinity names this CPU set");
        let report = probe(Duration::from_millis(200)).expect("every probe pinned");
        assert_eq!(report.cpus, allowed.len());
        assert!(report.elapsed >= Duration::from_millis(200));
        // Each late wake is later than LATE, so their sum is at least that.
        assert!(report.late_total >= LATE * report.late as u32);
        assert!(report.worst >= report.late_total / report.late.max(1) as u32);
    }
}
