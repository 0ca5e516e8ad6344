//! Instance slots for plugin calls: the pooling allocator's configuration, sized for the
//! largest default plugin, and the semaphore that makes a burst of calls wait for a free slot
//! (first come, first served) instead of failing to instantiate.

use std::sync::Arc;

use super::grants::HostLimits;
use crate::fifo_semaphore::FifoSemaphore;

/// One permit per concurrent call the instance pool holds (`None`: no pool, unbounded).
pub(super) fn call_slots(limit: Option<u32>) -> Arc<FifoSemaphore> {
    FifoSemaphore::new(limit.map_or(usize::MAX, |n| n as usize))
}

/// Slots for `limits.instance_pool` concurrent plugin calls, each sized for the largest default
/// plugin (the CPython-based check: a dozen core instances, a few memories, large tables).
/// Memory slots are reserved address space, committed only as a plugin touches its pages, and
/// reset between calls from the module's copy-on-write image.
pub(super) fn instance_pool(limits: &HostLimits) -> wasmtime::PoolingAllocationConfig {
    const CORE_INSTANCES_PER_COMPONENT: u32 = 32;
    const MEMORIES_PER_COMPONENT: u32 = 4;
    const TABLES_PER_COMPONENT: u32 = 8;
    let calls = limits.instance_pool;
    let mut pool = wasmtime::PoolingAllocationConfig::default();
    pool.total_component_instances(calls)
        .total_core_instances(calls * CORE_INSTANCES_PER_COMPONENT)
        .total_memories(calls * MEMORIES_PER_COMPONENT)
        .total_tables(calls * TABLES_PER_COMPONENT)
        .max_core_instances_per_component(CORE_INSTANCES_PER_COMPONENT)
        .max_memories_per_component(MEMORIES_PER_COMPONENT)
        .max_tables_per_component(TABLES_PER_COMPONENT)
        .max_memories_per_module(1)
        .max_tables_per_module(4)
        .table_elements(1 << 17)
        .max_core_instance_size(1 << 20)
        .max_memory_size((limits.max_memory_mb as usize) << 20);
    pool
}
