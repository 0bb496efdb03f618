//! ModelBudget core: decides whether ML models fit in a machine's memory and
//! where they go. Pure Rust with no Erlang dependency; the NIF crate only
//! converts terms.
//!
//! Every byte count is a `u64`; sums are checked so that nothing wraps.

pub mod admission;
pub mod budget;
pub mod check;
pub mod constraint;
pub mod devices;
pub mod distribute;
pub mod error;
pub mod evict;
pub mod fit;
pub mod gate;
pub mod gpu_map;
pub mod handover;
pub mod layout;
pub mod model;
pub mod options;
pub mod placement;
pub mod shape;
pub mod split;
pub mod system;

pub use budget::{Budget, BudgetSpec, GpuFree, Limit, RamSpec, VramLimits, VramSpec};
pub use check::{check, room, Device, Insufficient};
pub use constraint::{CompileError, Constraint, InvalidExpression};
pub use distribute::{distribute, DistributeOptions, Mode, SplitMode};
pub use error::{Error, Result};
pub use gpu_map::GpuMap;
pub use model::{Format, Model, PerLayer, TypeStats};
pub use options::OptionSet;
pub use placement::Placement;
