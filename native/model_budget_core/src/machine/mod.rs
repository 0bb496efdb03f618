//! The machine: its memory (container-aware) and its GPUs, as the budget
//! resolves them.

pub mod devices;
pub mod system;
