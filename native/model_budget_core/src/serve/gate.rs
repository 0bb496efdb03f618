//! The lease gate of a loaded model and the leases it gives: the request
//! path of a model server, lock-free but for one uncontended lock per
//! holder.
//!
//! A [`Gate`] holds a model's state (loading, open, claiming, closed), its
//! lease count and its last use (`lru`, the order of uses; `used_at`, the
//! manager's clock). A [`Lease`] holds its gate and ends once, when it is
//! consumed or dropped. A [`Holder`] keeps the leases one process took, by
//! number: each ends at its checkin, and all of them when the process
//! exits (the NIF crate's holder resource monitors the process). Leases
//! are counted, not allocated, on the request path: a checkout adds a
//! numbered entry to its process's holder.
//!
//! ## Closing a gate, race-free
//!
//! A checkout increments the count, then reads the state; the manager sets
//! the state, then reads the count. Both are `SeqCst`, so of the two at
//! least one sees the other: either the manager counts the new lease, or
//! the checkout sees the gate closed and takes its increment back. A claim
//! (eviction, keep-alive expiry) sets `claiming`, reads the count, then
//! closes (no lease) or reopens; a checkout that reads `claiming` backs off
//! and asks again once the manager has decided.
//!
//! ## Telling the manager
//!
//! Ending a lease decrements the count, then reads the state and the
//! manager's [`Waiting`] flag: the manager is told when the gate is closed
//! (an unload waits for the leases to end) or when it armed the flag (loads
//! wait for room; one message per arming).

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, Ordering::Release, Ordering::SeqCst};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use parking_lot::Mutex;

/// A gate's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Admitted, not loaded yet: no checkout.
    Loading = 0,
    /// Ready: checkouts succeed.
    Open = 1,
    /// The manager decides whether to evict: checkouts back off.
    Claiming = 2,
    /// Unloading or gone: no checkout.
    Closed = 3,
}

impl State {
    fn from_u8(v: u8) -> State {
        match v {
            0 => State::Loading,
            1 => State::Open,
            2 => State::Claiming,
            _ => State::Closed,
        }
    }
}

/// Why a checkout got no lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The gate is loading or closed.
    NotOpen,
    /// The manager is claiming the gate: ask again once it has decided.
    Claiming,
}

/// Whom the end of a lease must tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Notify {
    /// The gate is closed: an unload may wait for its leases.
    pub closed: bool,
    /// Loads wait for room (the manager's flag was armed; now disarmed).
    pub waiting: bool,
}

/// A manager's flag: armed while loads wait for room.
#[derive(Debug, Default)]
pub struct Waiting(AtomicBool);

impl Waiting {
    /// Arms (the next lease end tells the manager) or disarms the flag.
    pub fn arm(&self, on: bool) {
        self.0.store(on, SeqCst);
    }

    /// Whether the flag was armed, disarming it (one taker per arming).
    fn take(&self) -> bool {
        self.0.load(SeqCst) && self.0.swap(false, SeqCst)
    }
}

/// The order of uses: nanoseconds since the first stamp of this process,
/// monotonic (ties are broken by the caller, by admission order).
pub fn lru_stamp() -> i64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    let base = *BASE.get_or_init(Instant::now);
    i64::try_from(base.elapsed().as_nanos()).unwrap_or(i64::MAX)
}

/// A loaded model's gate (see the module doc).
#[derive(Debug)]
pub struct Gate {
    state: AtomicU8,
    count: AtomicI64,
    // Set by a forced unload: the leases still out end without counting.
    dropped: AtomicBool,
    lru: AtomicI64,
    used_at: AtomicI64,
    waiting: Arc<Waiting>,
}

impl Gate {
    /// A gate for a model just admitted: loading, used `now` (manager's clock).
    pub fn new(waiting: Arc<Waiting>, now: i64) -> Gate {
        Gate {
            state: AtomicU8::new(State::Loading as u8),
            count: AtomicI64::new(0),
            dropped: AtomicBool::new(false),
            lru: AtomicI64::new(lru_stamp()),
            used_at: AtomicI64::new(now),
            waiting,
        }
    }

    /// The state now.
    pub fn state(&self) -> State {
        State::from_u8(self.state.load(SeqCst))
    }

    /// Sets the state (the manager's side: open, close).
    pub fn set_state(&self, state: State) {
        self.state.store(state as u8, SeqCst);
    }

    /// How many leases hold the gate.
    pub fn count(&self) -> u64 {
        u64::try_from(self.count.load(SeqCst)).unwrap_or(0)
    }

    /// Closes the gate for an unload; returns whether leases still hold it.
    pub fn close(&self) -> bool {
        self.set_state(State::Closed);
        self.count() > 0
    }

    /// Closes the gate and ends every lease out (a forced unload, or the
    /// model is gone): those leases' later ends count for nothing.
    pub fn drop_leases(&self) {
        self.set_state(State::Closed);
        self.dropped.store(true, SeqCst);
        self.count.store(0, SeqCst);
    }

    /// Stamps a use now: the order of uses and the manager's clock `now`.
    pub fn used(&self, now: i64) {
        // Release suffices: nothing but the stamp depends on it, and a
        // lease's count, taken back after its stamp, is SeqCst. The clock
        // (ms) mostly has not moved: its line is then only read.
        self.lru.store(lru_stamp(), Release);
        if self.used_at.load(SeqCst) != now {
            self.used_at.store(now, Release);
        }
    }

    /// Stamps a use unless the gate is closed; returns whether it did.
    pub fn touch(&self, now: i64) -> bool {
        let open = self.state() != State::Closed;
        if open {
            self.used(now);
        }
        open
    }

    /// `(lru, used_at)`: the order of the last use and its clock.
    pub fn last_use(&self) -> (i64, i64) {
        (self.lru.load(SeqCst), self.used_at.load(SeqCst))
    }

    /// Takes a lease: counted before the state is read (see the module doc).
    pub fn checkout(self: &Arc<Gate>) -> Result<Lease, (Refused, Notify)> {
        match self.state() {
            State::Open | State::Claiming => {}
            State::Loading | State::Closed => return Err((Refused::NotOpen, Notify::default())),
        }
        self.count.fetch_add(1, SeqCst);
        match self.state() {
            State::Open => Ok(Lease {
                gate: Some(Arc::clone(self)),
            }),
            State::Claiming => Err((Refused::Claiming, self.release())),
            State::Loading | State::Closed => Err((Refused::NotOpen, self.release())),
        }
    }

    /// Takes a lease on a gate still loading: what a caller does with the
    /// gate it made for its own load before the manager sees it, so the
    /// model is leased the moment it opens, with no window for an
    /// eviction. Refused once the gate is closed (the load failed or was
    /// cancelled).
    pub fn reserve(self: &Arc<Gate>) -> Result<Lease, (Refused, Notify)> {
        self.count.fetch_add(1, SeqCst);
        match self.state() {
            State::Loading | State::Open => Ok(Lease {
                gate: Some(Arc::clone(self)),
            }),
            State::Claiming => Err((Refused::Claiming, self.release())),
            State::Closed => Err((Refused::NotOpen, self.release())),
        }
    }

    /// Takes one count back and says whom to tell.
    fn release(&self) -> Notify {
        if !self.dropped.load(SeqCst) {
            self.count.fetch_sub(1, SeqCst);
        }
        Notify {
            closed: self.state() == State::Closed,
            waiting: self.waiting.take(),
        }
    }
}

/// Claims `gates` for an eviction or an expiry, all or none: `Ok(())` with
/// every gate closed, or `Err(indexes)` (the positions of the leased gates)
/// with every gate open again.
pub fn claim(gates: &[&Gate]) -> Result<(), Vec<usize>> {
    for gate in gates {
        gate.set_state(State::Claiming);
    }
    let leased: Vec<usize> = (0..gates.len()).filter(|&i| gates[i].count() > 0).collect();
    let state = if leased.is_empty() {
        State::Closed
    } else {
        State::Open
    };
    for gate in gates {
        gate.set_state(state);
    }
    if leased.is_empty() {
        Ok(())
    } else {
        Err(leased)
    }
}

/// A lease on a gate: ends once, at [`Lease::checkin`], [`Lease::end`] or
/// when dropped (then without telling anyone: a holder ends its leases
/// itself, and says whom to tell).
#[derive(Debug)]
pub struct Lease {
    // Taken when the lease ends.
    gate: Option<Arc<Gate>>,
}

impl Lease {
    /// Ends the lease after stamping a use at `now` (manager's clock; the
    /// use is seen before the count drops); says whom to tell.
    pub fn checkin(mut self, now: i64) -> Notify {
        if let Some(gate) = &self.gate {
            gate.used(now);
        }
        self.finish()
    }

    /// Ends the lease without a use (its process is gone); says whom to tell.
    pub fn end(mut self) -> Notify {
        self.finish()
    }

    fn finish(&mut self) -> Notify {
        self.gate
            .take()
            .map(|gate| gate.release())
            .unwrap_or_default()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.finish();
    }
}

/// The leases one process took, by number, each with `T`: whom its end
/// must tell (the NIF crate: the model's manager).
#[derive(Debug)]
pub struct Holder<T> {
    held: Mutex<Held<T>>,
}

#[derive(Debug)]
struct Held<T> {
    last: u64,
    leases: Vec<(u64, Lease, T)>,
}

// Each critical section is one push, one removal or one take of the whole
// list: a panic cannot leave a holder half updated.
impl<T> std::panic::RefUnwindSafe for Holder<T> {}

impl<T: Copy> Default for Holder<T> {
    fn default() -> Self {
        Holder {
            held: Mutex::new(Held {
                last: 0,
                leases: Vec::new(),
            }),
        }
    }
}

impl<T: Copy> Holder<T> {
    /// Takes a lease on `gate` (see [`Gate::checkout`]); `Ok(number)`, the
    /// number [`Holder::checkin`] takes, unique within this holder.
    pub fn checkout(&self, gate: &Arc<Gate>, tell: T) -> Result<u64, (Refused, Notify)> {
        Ok(self.hold(gate.checkout()?, tell))
    }

    /// Takes a lease on a gate still loading (see [`Gate::reserve`]).
    pub fn reserve(&self, gate: &Arc<Gate>, tell: T) -> Result<u64, (Refused, Notify)> {
        Ok(self.hold(gate.reserve()?, tell))
    }

    /// Numbers `lease` and keeps it.
    fn hold(&self, lease: Lease, tell: T) -> u64 {
        let mut held = self.held.lock();
        held.last += 1;
        let number = held.last;
        held.leases.push((number, lease, tell));
        number
    }

    /// Ends lease `number` with a use at `now`: whom to tell, or `None`
    /// when it had ended already (or never was).
    pub fn checkin(&self, number: u64, now: i64) -> Option<(Notify, T)> {
        let (lease, tell) = {
            let mut held = self.held.lock();
            // The newest leases are the likeliest to end first.
            let at = held.leases.iter().rposition(|(n, _, _)| *n == number)?;
            let (_, lease, tell) = held.leases.swap_remove(at);
            (lease, tell)
        };
        Some((lease.checkin(now), tell))
    }

    /// Ends every lease still held (the process is gone), each with whom
    /// to tell.
    pub fn end_all(&self) -> Vec<(Notify, T)> {
        let leases = std::mem::take(&mut self.held.lock().leases);
        leases
            .into_iter()
            .map(|(_, lease, tell)| (lease.end(), tell))
            .collect()
    }

    /// How many leases it holds.
    pub fn len(&self) -> usize {
        self.held.lock().leases.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Barrier;
    use std::thread;

    fn open_gate() -> Arc<Gate> {
        let gate = Arc::new(Gate::new(Arc::new(Waiting::default()), 0));
        gate.set_state(State::Open);
        gate
    }

    #[test]
    fn a_loading_gate_refuses_an_open_one_counts_and_a_lease_ends_once() {
        let gate = Arc::new(Gate::new(Arc::new(Waiting::default()), 5));
        assert_eq!(gate.checkout().unwrap_err().0, Refused::NotOpen);
        gate.set_state(State::Open);
        let lease = gate.checkout().unwrap();
        assert_eq!(gate.count(), 1);
        assert_eq!(lease.checkin(7), Notify::default());
        assert_eq!((gate.count(), gate.last_use().1), (0, 7));
        // A lease dropped unended still gives its count back.
        drop(gate.checkout().unwrap());
        assert_eq!(gate.count(), 0);
    }

    #[test]
    fn a_claimed_gate_backs_checkouts_off_and_claim_is_all_or_none() {
        let (a, b) = (open_gate(), open_gate());
        let lease = b.checkout().unwrap();
        assert_eq!(claim(&[&a, &b]), Err(vec![1]));
        assert_eq!((a.state(), b.state()), (State::Open, State::Open));
        a.set_state(State::Claiming);
        assert_eq!(a.checkout().unwrap_err().0, Refused::Claiming);
        assert_eq!(a.count(), 0);
        lease.end();
        assert_eq!(claim(&[&a, &b]), Ok(()));
        assert_eq!(b.checkout().unwrap_err().0, Refused::NotOpen);
    }

    #[test]
    fn an_end_tells_the_manager_of_a_closed_gate_and_once_per_arming() {
        let waiting = Arc::new(Waiting::default());
        let gate = Arc::new(Gate::new(Arc::clone(&waiting), 0));
        gate.set_state(State::Open);
        let leases: Vec<Lease> = (0..3).map(|_| gate.checkout().unwrap()).collect();
        let mut leases = leases.into_iter();
        waiting.arm(true);
        assert!(leases.next().unwrap().end().waiting);
        assert!(!leases.next().unwrap().end().waiting);
        assert!(gate.close());
        assert!(leases.next().unwrap().end().closed);
        assert!(!gate.close());
    }

    #[test]
    fn a_reserved_lease_holds_a_loading_gate_through_its_opening() {
        let waiting = Arc::new(Waiting::default());
        let gate = Arc::new(Gate::new(Arc::clone(&waiting), 0));
        // Loading: no checkout, but its maker may reserve.
        assert_eq!(gate.checkout().unwrap_err().0, Refused::NotOpen);
        let lease = gate.reserve().unwrap();
        assert_eq!(gate.count(), 1);
        gate.set_state(State::Open);
        // Opened leased: an eviction's claim finds it held.
        assert_eq!(claim(&[&gate]), Err(vec![0]));
        lease.checkin(5);
        assert_eq!(claim(&[&gate]), Ok(()));
        // A closed gate (a failed load) takes no reservation.
        assert_eq!(gate.reserve().unwrap_err().0, Refused::NotOpen);
        assert_eq!(gate.count(), 0);
    }

    #[test]
    fn leases_dropped_by_a_forced_unload_end_without_counting() {
        let gate = open_gate();
        let lease = gate.checkout().unwrap();
        gate.drop_leases();
        assert_eq!(gate.count(), 0);
        assert!(lease.end().closed);
        assert_eq!(gate.count(), 0);
    }

    // The race the protocol exists for: a checkout that succeeds is always
    // seen by the close that races it.
    #[test]
    fn closing_races_checkouts_and_counts_every_lease_that_stands() {
        for _ in 0..2_000 {
            let gate = open_gate();
            let barrier = Arc::new(Barrier::new(5));
            let takers: Vec<_> = (0..4)
                .map(|_| {
                    let (gate, barrier) = (Arc::clone(&gate), Arc::clone(&barrier));
                    thread::spawn(move || {
                        barrier.wait();
                        gate.checkout().ok()
                    })
                })
                .collect();
            barrier.wait();
            let leased = gate.close();
            let leases: Vec<Lease> = takers
                .into_iter()
                .filter_map(|t| t.join().unwrap())
                .collect();
            if !leases.is_empty() {
                assert!(leased);
            }
            assert_eq!(gate.count(), leases.len() as u64);
        }
    }

    #[test]
    fn a_holder_numbers_its_leases_and_ends_each_once() {
        let gate = open_gate();
        let holder: Holder<u8> = Holder::default();
        let first = holder.checkout(&gate, 1).unwrap();
        let second = holder.checkout(&gate, 2).unwrap();
        assert_ne!(first, second);
        assert_eq!(gate.count(), 2);
        assert_eq!(holder.checkin(first, 9), Some((Notify::default(), 1)));
        assert_eq!(holder.checkin(first, 10), None);
        assert_eq!(holder.checkin(77, 10), None);
        assert_eq!((gate.count(), gate.last_use().1, holder.len()), (1, 9, 1));
        assert!(holder.checkin(second, 11).is_some());
        assert!(holder.is_empty());
        gate.set_state(State::Loading);
        assert_eq!(holder.checkout(&gate, 3).unwrap_err().0, Refused::NotOpen);
        assert!(holder.is_empty());
    }

    #[test]
    fn a_holder_whose_process_is_gone_ends_every_lease_and_says_whom_to_tell() {
        let (a, b) = (open_gate(), open_gate());
        let holder: Holder<&str> = Holder::default();
        holder.checkout(&a, "a").unwrap();
        let on_b = holder.checkout(&b, "b").unwrap();
        holder.checkout(&b, "b").unwrap();
        assert!(b.close());
        let mut ended = holder.end_all();
        ended.sort_by_key(|(_, tell)| *tell);
        let tells: Vec<(bool, &str)> = ended.iter().map(|(n, t)| (n.closed, *t)).collect();
        assert_eq!(tells, [(false, "a"), (true, "b"), (true, "b")]);
        assert_eq!((a.count(), b.count()), (0, 0));
        assert_eq!(holder.checkin(on_b, 1), None);
        assert!(holder.end_all().is_empty());
    }

    #[test]
    fn concurrent_checkouts_and_checkins_leave_no_count() {
        let gate = open_gate();
        let holder: Arc<Holder<()>> = Arc::new(Holder::default());
        let workers: Vec<_> = (0..4)
            .map(|_| {
                let (gate, holder) = (Arc::clone(&gate), Arc::clone(&holder));
                thread::spawn(move || {
                    for i in 0..10_000 {
                        let number = holder.checkout(&gate, ()).unwrap();
                        assert!(holder.checkin(number, i).is_some());
                        assert!(holder.checkin(number, i).is_none());
                    }
                })
            })
            .collect();
        workers.into_iter().for_each(|w| w.join().unwrap());
        assert_eq!((gate.count(), holder.len()), (0, 0));
    }
}
