//! Lease gates and lease holders as NIF resources (the logic is
//! `model_budget_core::serve::gate`). A holder keeps the leases of one process,
//! which it monitors: a lease ends at checkin or when the process that took
//! it exits (the holder's `down`), or, should every term of the holder be
//! gone first, at its destructor. A lease itself is a number, so a checkout
//! allocates nothing the garbage collector must free. Ending a lease tells
//! the manager, when it must know, with
//! `{ModelBudget.ModelManager, :lease_ended, inc | nil}`.

use std::sync::Arc;

use model_budget_core::serve::gate::{self, Gate, Holder, Notify, Refused, State, Waiting};
use rustler::{Atom, Encoder, Env, LocalPid, Monitor, ResourceArc, Term};

use crate::atoms;

rustler::atoms! {
    model_manager = "Elixir.ModelBudget.ModelManager",
    lease_ended,
    leased,
    loading,
    open,
    claiming,
    closed,
    not_open,
}

struct WaitingRes(Arc<Waiting>);

#[rustler::resource_impl]
impl rustler::Resource for WaitingRes {}

/// Whom the end of a lease tells: the model's manager, and the model's
/// incarnation.
#[derive(Clone, Copy)]
struct Manager {
    pid: LocalPid,
    inc: u64,
}

struct GateRes {
    gate: Arc<Gate>,
    manager: Manager,
}

#[rustler::resource_impl]
impl rustler::Resource for GateRes {}

struct HolderRes(Holder<Manager>);

// A manager that is gone has nobody to tell: the send fails quietly.
fn tell(env: Env, manager: Manager, notify: Notify) {
    if notify.closed {
        let _ = env.send(&manager.pid, (model_manager(), lease_ended(), manager.inc));
    }
    if notify.waiting {
        let _ = env.send(&manager.pid, (model_manager(), lease_ended(), atoms::nil()));
    }
}

fn end_all(env: Env, holder: &Holder<Manager>) {
    for (notify, manager) in holder.end_all() {
        tell(env, manager, notify);
    }
}

#[rustler::resource_impl]
impl rustler::Resource for HolderRes {
    const IMPLEMENTS_DESTRUCTOR: bool = true;
    const IMPLEMENTS_DOWN: bool = true;

    // The process that took the leases exited: they end, whoever holds a
    // copy of their terms.
    fn down<'a>(&'a self, env: Env<'a>, _pid: LocalPid, _monitor: Monitor) {
        end_all(env, &self.0);
    }

    // Every term of the holder is gone before its process (its dictionary
    // was erased, say): its leases end with it.
    fn destructor(self, env: Env<'_>) {
        end_all(env, &self.0);
    }
}

fn state_atom(state: State) -> Atom {
    match state {
        State::Loading => loading(),
        State::Open => open(),
        State::Claiming => claiming(),
        State::Closed => closed(),
    }
}

#[rustler::nif]
fn gate_waiting_new() -> ResourceArc<WaitingRes> {
    ResourceArc::new(WaitingRes(Arc::new(Waiting::default())))
}

#[rustler::nif]
fn gate_waiting_arm(waiting: &WaitingRes, on: bool) -> Atom {
    waiting.0.arm(on);
    atoms::ok()
}

#[rustler::nif]
fn gate_new(
    waiting: ResourceArc<WaitingRes>,
    manager: LocalPid,
    inc: u64,
    now: i64,
) -> ResourceArc<GateRes> {
    let gate = Arc::new(Gate::new(Arc::clone(&waiting.0), now));
    let manager = Manager { pid: manager, inc };
    ResourceArc::new(GateRes { gate, manager })
}

/// A holder for the calling process's leases, monitoring it.
#[rustler::nif]
fn gate_holder_new(env: Env) -> ResourceArc<HolderRes> {
    let holder = ResourceArc::new(HolderRes(Holder::default()));
    // The caller is alive: it is running this call.
    let _ = env.monitor(&holder, &env.pid());
    holder
}

/// `{:ok, number}` (the lease, in `holder`), `:claiming` (ask again) or
/// `:not_open`. A gate whose manager is gone (or exiting) is not open: a
/// caller may hold a gate from before its manager died.
#[rustler::nif]
fn gate_checkout<'a>(env: Env<'a>, gate: &GateRes, holder: &HolderRes) -> Term<'a> {
    // A lookup in the process table: no signal to the manager, no wait.
    if !gate.manager.pid.is_alive(env) {
        return not_open().encode(env);
    }
    match holder.0.checkout(&gate.gate, gate.manager) {
        Ok(number) => (atoms::ok(), number).encode(env),
        Err((refused, notify)) => {
            tell(env, gate.manager, notify);
            match refused {
                Refused::Claiming => claiming().encode(env),
                Refused::NotOpen => not_open().encode(env),
            }
        }
    }
}

/// A lease of `holder` on a gate still loading, which the caller made for
/// its own load (`Gate::reserve`): `{:ok, number}` or `:not_open`.
#[rustler::nif]
fn gate_reserve<'a>(env: Env<'a>, gate: &GateRes, holder: &HolderRes) -> Term<'a> {
    match holder.0.reserve(&gate.gate, gate.manager) {
        Ok(number) => (atoms::ok(), number).encode(env),
        Err((_, notify)) => {
            tell(env, gate.manager, notify);
            not_open().encode(env)
        }
    }
}

/// Ends lease `number` of `holder` (a second checkin does nothing) and
/// stamps a use at `now`: the manager's clock, or `nil` for its default
/// clock, the runtime's monotonic milliseconds
/// (`:erlang.monotonic_time(:millisecond)`), read here without a call back
/// into Erlang.
#[rustler::nif]
fn gate_checkin(env: Env, holder: &HolderRes, number: u64, now: Option<i64>) -> Atom {
    let now = now.unwrap_or_else(|| unsafe {
        rustler::sys::enif_monotonic_time(rustler::sys::ErlNifTimeUnit::ERL_NIF_MSEC)
    });
    if let Some((notify, manager)) = holder.0.checkin(number, now) {
        tell(env, manager, notify);
    }
    atoms::ok()
}

#[rustler::nif]
fn gate_set(gate: &GateRes, state: Atom) -> Atom {
    let state = [State::Loading, State::Open, State::Claiming, State::Closed]
        .into_iter()
        .find(|s| state_atom(*s) == state)
        .unwrap_or(State::Closed);
    gate.gate.set_state(state);
    atoms::ok()
}

#[rustler::nif]
fn gate_state(gate: &GateRes) -> Atom {
    state_atom(gate.gate.state())
}

#[rustler::nif]
fn gate_close(gate: &GateRes) -> bool {
    gate.gate.close()
}

#[rustler::nif]
fn gate_drop(gate: &GateRes) -> Atom {
    gate.gate.drop_leases();
    atoms::ok()
}

#[rustler::nif]
fn gate_count(gate: &GateRes) -> u64 {
    gate.gate.count()
}

#[rustler::nif]
fn gate_used(gate: &GateRes, now: i64) -> Atom {
    gate.gate.used(now);
    atoms::ok()
}

#[rustler::nif]
fn gate_touch(gate: &GateRes, now: i64) -> bool {
    gate.gate.touch(now)
}

#[rustler::nif]
fn gate_last_use(gate: &GateRes) -> (i64, i64) {
    gate.gate.last_use()
}

/// `:ok` (every gate closed) or `{:leased, indexes}` (every gate open).
#[rustler::nif]
fn gate_claim(env: Env, gates: Vec<ResourceArc<GateRes>>) -> Term {
    let gates: Vec<&Gate> = gates.iter().map(|g| &*g.gate).collect();
    match gate::claim(&gates) {
        Ok(()) => atoms::ok().encode(env),
        Err(indexes) => (leased(), indexes).encode(env),
    }
}
