//! This machine's memory, probed on a dirty I/O scheduler.

use rustler::NifMap;

#[derive(NifMap)]
struct SystemMemory {
    total: u64,
    available: u64,
    limit: u64,
}

#[rustler::nif(schedule = "DirtyIo")]
fn system_memory() -> SystemMemory {
    let m = model_budget_core::machine::system::memory();
    SystemMemory {
        total: m.total,
        available: m.available,
        limit: m.limit,
    }
}

/// The memory this process may use, as last read: what `:auto` RAM budgets
/// take 80% of. Cheap after the first call (see `system::limit`).
#[rustler::nif(schedule = "DirtyIo")]
fn memory_limit() -> u64 {
    model_budget_core::machine::system::limit()
}
