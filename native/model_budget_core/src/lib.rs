//! ModelBudget core: decides whether ML models fit in a machine's memory and
//! where they go. Pure Rust with no Erlang dependency; the NIF crate only
//! converts terms.
//!
//! Every byte count is a `u64`; sums are checked so that nothing wraps.

pub mod budget;
pub mod error;
pub mod estimate;
pub mod machine;
pub mod model;
pub mod serve;

pub use budget::check::{check, room, Device, Insufficient};
pub use budget::constraint::{CompileError, Constraint, InvalidExpression};
pub use budget::gpu_map::GpuMap;
pub use budget::placement::Placement;
pub use budget::spec::{Budget, BudgetSpec, GpuFree, Limit, RamSpec, VramLimits, VramSpec};
pub use error::{Error, Result};
pub use estimate::distribute::{distribute, DistributeOptions, Mode, SplitMode};
pub use estimate::options::OptionSet;
pub use model::{Format, Model, PerLayer, TypeStats};
