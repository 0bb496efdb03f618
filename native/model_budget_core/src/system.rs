//! This machine's memory, container-aware.

use sysinfo::{MemoryRefreshKind, RefreshKind, System};

/// RAM as this process sees it, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SystemMemory {
    /// Physical memory.
    pub total: u64,
    /// Memory the kernel reports as available for new allocations.
    pub available: u64,
    /// The smaller of physical memory and the cgroup memory limit, when one
    /// applies: what this process can really have.
    pub limit: u64,
}

/// Reads the machine's memory and the cgroup (v1 or v2) limit.
pub fn memory() -> SystemMemory {
    let sys = System::new_with_specifics(
        RefreshKind::nothing().with_memory(MemoryRefreshKind::nothing().with_ram()),
    );
    let total = sys.total_memory();
    let mut available = sys.available_memory();
    let mut limit = total;
    if let Some(cgroup) = sys.cgroup_limits() {
        limit = limit.min(cgroup.total_memory);
        available = available.min(cgroup.free_memory);
    }
    SystemMemory {
        total,
        available,
        limit,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_plausible_numbers() {
        let m = memory();
        assert!(m.total > 0);
        assert!(m.limit <= m.total);
        assert!(m.available <= m.total);
    }
}
