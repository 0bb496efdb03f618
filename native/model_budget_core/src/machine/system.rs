//! This machine's memory, container-aware.

use parking_lot::Mutex;
use sysinfo::{MemoryRefreshKind, RefreshKind, System};

/// RAM as this process sees it, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SystemMemory {
    /// Physical memory.
    pub total: u64,
    /// Memory the kernel reports as available for new allocations.
    pub available: u64,
    /// The smaller of physical memory and the cgroup memory limit, when one
    /// applies: what this process can really have.
    pub limit: u64,
}

/// The `System` kept between calls, so that later calls refresh RAM figures
/// only, and the last reading, whose `limit` [`limit`] re-uses.
static SYSTEM: Mutex<Option<(System, SystemMemory)>> = Mutex::new(None);

fn ram_only() -> MemoryRefreshKind {
    MemoryRefreshKind::nothing().with_ram()
}

/// Reads the machine's memory and the cgroup (v1 or v2) limit now.
pub fn memory() -> SystemMemory {
    let mut cache = SYSTEM.lock();
    let (sys, last) = match &mut *cache {
        Some(cached) => {
            cached.0.refresh_memory_specifics(ram_only());
            cached
        }
        None => cache.insert((
            System::new_with_specifics(RefreshKind::nothing().with_memory(ram_only())),
            SystemMemory::default(),
        )),
    };
    *last = read(sys);
    *last
}

/// The memory this process may use ([`SystemMemory::limit`]) as last read.
///
/// Physical memory and a cgroup's limit do not change while a process runs
/// (short of memory hot-plug or `docker update`), and reading them costs
/// several file reads, so this reads them once and then re-uses them;
/// every [`memory`] call reads them again.
pub fn limit() -> u64 {
    if let Some((_, last)) = &*SYSTEM.lock() {
        return last.limit;
    }
    memory().limit
}

/// [`limit`] when it was read before and nobody is reading it now: never
/// blocks and never touches a file, so that a NIF on a normal scheduler
/// may call it and fall back to a dirty one on `None`.
pub fn cached_limit() -> Option<u64> {
    SYSTEM.try_lock()?.as_ref().map(|(_, last)| last.limit)
}

fn read(sys: &System) -> SystemMemory {
    let total = sys.total_memory();
    let mut available = sys.available_memory();
    let mut limit = total;
    // sysinfo asserts that RAM was read before cgroups are; an unreadable
    // /proc/meminfo leaves it at 0.
    if let Some(cgroup) = (total > 0).then(|| sys.cgroup_limits()).flatten() {
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

    #[test]
    fn later_calls_see_the_same_machine() {
        let first = memory();
        let second = memory();
        assert_eq!(first.total, second.total);
        assert_eq!(first.limit, second.limit);
        assert_eq!(limit(), second.limit);
        // Another test may hold the lock for a moment: `None` then.
        let cached = std::iter::repeat_with(cached_limit)
            .take(10_000)
            .flatten()
            .next();
        assert_eq!(cached, Some(second.limit));
    }
}
