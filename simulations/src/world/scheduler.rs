//! Simulated time and the event queue: events run in (due time, insertion)
//! order, so a seed replays the same schedule.

use super::*;

/// Simulated time (the paused tokio clock since `start`) and the events
/// due, in time order.
pub(crate) struct Scheduler {
    pub(crate) start: Instant,
    seq: u64,
    /// Events by (due time in simulated ms, insertion number).
    pub(crate) queue: BTreeMap<(u64, u64), Ev>,
    /// Events handled so far.
    pub(crate) step: u64,
    /// Jobs for the driver (crashes and starts need to await).
    pub(crate) jobs: Vec<Job>,
    /// Wakes the driver when an event is queued.
    pub(crate) notify: Arc<Notify>,
}

impl Scheduler {
    pub(crate) fn new() -> Self {
        Scheduler {
            start: Instant::now(),
            seq: 0,
            queue: BTreeMap::new(),
            step: 0,
            jobs: Vec::new(),
            notify: Arc::new(Notify::new()),
        }
    }

    /// Simulated milliseconds (the paused tokio clock).
    pub(crate) fn now(&self) -> u64 {
        EPOCH_MS + (Instant::now() - self.start).as_millis() as u64
    }

    pub(crate) fn push(&mut self, delay_ms: u64, ev: Ev) {
        self.seq += 1;
        let at = self.now() + delay_ms;
        self.queue.insert((at, self.seq), ev);
        self.notify.notify_one();
    }

    /// Takes the next event if it is due now, counting it as a step.
    pub(crate) fn pop_due(&mut self) -> Option<Ev> {
        let now = self.now();
        let ((at, _), _) = self.queue.first_key_value()?;
        if *at > now {
            return None;
        }
        let (_, ev) = self.queue.pop_first()?;
        self.step += 1;
        Some(ev)
    }

    pub(crate) fn next_at(&self) -> Option<u64> {
        self.queue.first_key_value().map(|((at, _), _)| *at)
    }
}

/// The event loop: one due event per step.
impl World {
    /// Pops and handles the next due event. Returns `false` if none is due.
    pub(crate) fn step_event(&mut self) -> bool {
        let Some(ev) = self.sched.pop_due() else {
            return false;
        };
        self.handle_event(ev);
        true
    }

    pub(crate) fn next_event_at(&self) -> Option<u64> {
        self.sched.next_at()
    }

    pub(super) fn handle_event(&mut self, ev: Ev) {
        match ev {
            Ev::Deliver { from, to, bytes } => self.deliver(from, to, bytes),
            Ev::Tick => {
                for id in self.live_ids() {
                    let now_ms = self.clock_of(id);
                    self.drive(id, Event::Tick { now_ms });
                }
                self.schedule(50, Ev::Tick);
            }
            Ev::Workload => {
                if self.load.workload_on {
                    if self.adversary.byzantine.is_some() && self.rng.random_range(0..100) < 5 {
                        self.forge();
                    }
                    self.workload();
                    let d = self.rng.random_range(100..600);
                    self.schedule(d, Ev::Workload);
                }
            }
            Ev::Fault => {
                self.fault();
                let d = self.rng.random_range(2_000..8_000);
                self.schedule(d, Ev::Fault);
            }
            Ev::Restart(id) => self.sched.jobs.push(Job::Start(id)),
            Ev::Heal => self.net.heal(),
            Ev::LateErase { id, key, version } => self.erase_now(id, key, version),
        }
    }
}
