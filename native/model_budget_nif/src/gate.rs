//! Lease gates and leases as NIF resources (the logic is
//! `model_budget_core::gate`): a lease is a resource whose destructor ends
//! it, so a lease ends at checkin or when its last term is garbage, its
//! holder's exit included. Ending a lease tells the manager, when it must
//! know, with `{ModelBudget.ModelManager, :lease_ended, inc | nil}`.

use std::sync::Arc;

use model_budget_core::gate::{self, Gate, Lease, Notify, Refused, State, Waiting};
use rustler::{Atom, Encoder, Env, LocalPid, ResourceArc, Term};

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

struct GateRes {
    gate: Arc<Gate>,
    manager: LocalPid,
    inc: u64,
}

#[rustler::resource_impl]
impl rustler::Resource for GateRes {}

struct LeaseRes {
    lease: Lease,
    manager: LocalPid,
    inc: u64,
}

// A manager that is gone has nobody to tell: the send fails quietly.
fn tell(env: Env, manager: &LocalPid, inc: u64, notify: Notify) {
    if notify.closed {
        let _ = env.send(manager, (model_manager(), lease_ended(), inc));
    }
    if notify.waiting {
        let _ = env.send(manager, (model_manager(), lease_ended(), atoms::nil()));
    }
}

#[rustler::resource_impl]
impl rustler::Resource for LeaseRes {
    const IMPLEMENTS_DESTRUCTOR: bool = true;

    // The last term of a lease is gone (its holder exited, or dropped it):
    // the lease ends, from the callback env of the garbage collection.
    fn destructor(self, env: Env<'_>) {
        if let Some(notify) = self.lease.end() {
            tell(env, &self.manager, self.inc, notify);
        }
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
    ResourceArc::new(GateRes { gate, manager, inc })
}

/// `{:ok, lease}`, `:claiming` (ask again) or `:not_open`.
#[rustler::nif]
fn gate_checkout<'a>(env: Env<'a>, gate: &GateRes) -> Term<'a> {
    match gate.gate.checkout() {
        Ok(lease) => {
            let lease = LeaseRes {
                lease,
                manager: gate.manager,
                inc: gate.inc,
            };
            (atoms::ok(), ResourceArc::new(lease)).encode(env)
        }
        Err((refused, notify)) => {
            tell(env, &gate.manager, gate.inc, notify);
            match refused {
                Refused::Claiming => claiming().encode(env),
                Refused::NotOpen => not_open().encode(env),
            }
        }
    }
}

/// Ends a lease (a second checkin does nothing) and stamps a use at `now`:
/// the manager's clock, or `nil` for its default clock, the runtime's
/// monotonic milliseconds (`:erlang.monotonic_time(:millisecond)`), read
/// here without a call back into Erlang.
#[rustler::nif]
fn gate_checkin(env: Env, lease: &LeaseRes, now: Option<i64>) -> Atom {
    let now = now.unwrap_or_else(|| unsafe {
        rustler::sys::enif_monotonic_time(rustler::sys::ErlNifTimeUnit::ERL_NIF_MSEC)
    });
    if let Some(notify) = lease.lease.checkin(now) {
        tell(env, &lease.manager, lease.inc, notify);
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
