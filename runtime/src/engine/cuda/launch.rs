//! Kernel launches with raw device addresses, so buffers can be passed by value (or as 0 for
//! an absent bias) and a captured graph replays the same arguments.

use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DeviceRepr};

/// The device address of `slice` (valid while it lives). Event tracking is off for the
/// backend's context, so no synchronisation object is attached.
pub fn addr<T: DeviceRepr>(slice: &CudaSlice<T>, stream: &CudaStream) -> u64 {
    let (ptr, _sync) = slice.device_ptr(stream);
    ptr
}

/// `launch!(stream, function, grid, block, shared_bytes; arg, arg, ...)`: each argument is an
/// expression of a `DeviceRepr` type (u64 addresses, i32, f32), copied into a local first.
macro_rules! launch {
    ($stream:expr, $f:expr, $grid:expr, $block:expr, $shared:expr; $($arg:expr),* $(,)?) => {{
        use cudarc::driver::PushKernelArg;
        let cfg = cudarc::driver::LaunchConfig {
            grid_dim: $grid,
            block_dim: ($block, 1, 1),
            shared_mem_bytes: $shared,
        };
        let mut builder = $stream.launch_builder($f);
        // Each value is its own (shadowed, still live) local until the launch below.
        $(
            let value = $arg;
            builder.arg(&value);
        )*
        // SAFETY: the arguments match the kernel's parameter list (checked by the GPU tests
        // against the CPU reference); every address is a live allocation of the right size.
        unsafe { builder.launch(cfg) }.map(|_| ())
    }};
}
pub(crate) use launch;
