//! Budgets: what may be used on each device (`spec`), where a model's bytes
//! sit (`placement`), whether a placement fits (`check`), which resident
//! models make room (`evict`, `handover`), a manager's admission with both
//! in one step (`admission`) and the user's own rules (`constraint`).

pub mod admission;
pub mod check;
pub mod constraint;
pub mod evict;
pub mod gpu_map;
pub mod handover;
pub mod placement;
pub mod spec;
#[cfg(test)]
mod strategies;
