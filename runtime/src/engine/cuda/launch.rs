//! Kernel launches with raw device addresses, so buffers can be passed by value (or as 0 for
//! an absent bias) and a captured graph replays the same arguments; optionally with
//! programmatic dependent launch (PDL, Hopper and later), which lets a kernel start launching
//! while its predecessor drains (each kernel waits in `pdl_wait()` before touching memory).

use std::ffi::c_void;

use cudarc::driver::sys::{
    CUlaunchAttribute, CUlaunchAttributeID, CUlaunchConfig, cuLaunchKernelEx,
};
use cudarc::driver::{CudaFunction, CudaSlice, CudaStream, DevicePtr, DeviceRepr, DriverError};

/// The device address of `slice` (valid while it lives). Event tracking is off for the
/// backend's context, so no synchronisation object is attached.
pub fn addr<T: DeviceRepr>(slice: &CudaSlice<T>, stream: &CudaStream) -> u64 {
    let (ptr, _sync) = slice.device_ptr(stream);
    ptr
}

/// Launch `f` on `stream`; `params` point at each argument's value, in order.
///
/// # Safety
/// `params` must match the kernel's parameter list in number, order and types, and every
/// device address among them must be a live allocation of the size the kernel assumes.
pub unsafe fn launch_raw(
    stream: &CudaStream,
    f: &CudaFunction,
    grid: (u32, u32, u32),
    block: u32,
    shared_bytes: u32,
    pdl: bool,
    params: &mut [*mut c_void],
) -> Result<(), DriverError> {
    let kind = if pdl { Launch::Pdl } else { Launch::Plain };
    // SAFETY: passed on from the caller.
    unsafe { launch_as(stream, f, grid, block, shared_bytes, kind, params) }
}

/// How a kernel is launched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launch {
    Plain,
    /// Programmatic dependent launch.
    Pdl,
    /// Cooperative: every block resident at once (or the launch fails), as a grid-wide
    /// barrier needs.
    Cooperative,
}

/// [`launch_raw`] launched as `kind`.
///
/// # Safety
/// As [`launch_raw`].
pub unsafe fn launch_as(
    stream: &CudaStream,
    f: &CudaFunction,
    grid: (u32, u32, u32),
    block: u32,
    shared_bytes: u32,
    kind: Launch,
    params: &mut [*mut c_void],
) -> Result<(), DriverError> {
    // SAFETY: an all-zero attribute is a valid "ignored" value; id and value are set below.
    let mut attr: CUlaunchAttribute = unsafe { std::mem::zeroed() };
    match kind {
        Launch::Plain => {}
        Launch::Pdl => {
            attr.id = CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
            attr.value.programmaticStreamSerializationAllowed = 1;
        }
        Launch::Cooperative => {
            attr.id = CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_COOPERATIVE;
            attr.value.cooperative = 1;
        }
    }
    let with_attr = kind != Launch::Plain;
    let config = CUlaunchConfig {
        gridDimX: grid.0,
        gridDimY: grid.1,
        gridDimZ: grid.2,
        blockDimX: block,
        blockDimY: 1,
        blockDimZ: 1,
        sharedMemBytes: shared_bytes,
        hStream: stream.cu_stream(),
        attrs: if with_attr {
            &mut attr
        } else {
            std::ptr::null_mut()
        },
        numAttrs: u32::from(with_attr),
    };
    stream.context().bind_to_thread()?;
    // SAFETY: the caller vouches for `params`; config and attribute outlive the call.
    unsafe {
        cuLaunchKernelEx(
            &config,
            f.cu_function(),
            params.as_mut_ptr(),
            std::ptr::null_mut(),
        )
    }
    .result()
}

/// `launch!(pdl, stream, function, grid, block, shared_bytes; arg, arg, ...)`: each argument
/// is an expression of a `DeviceRepr` type (u64 addresses, i32, f32, argument structs),
/// copied into a local that lives until the launch returns.
macro_rules! launch {
    ($pdl:expr, $stream:expr, $f:expr, $grid:expr, $block:expr, $shared:expr; $($arg:expr),* $(,)?) => {{
        let mut params: Vec<*mut std::ffi::c_void> = Vec::new();
        // Each value is its own (shadowed, still live) local until the launch below.
        $(
            let value = $arg;
            params.push(&value as *const _ as *mut std::ffi::c_void);
        )*
        // SAFETY: the arguments match the kernel's parameter list (checked by the GPU tests
        // against the CPU reference); every address is a live allocation of the right size.
        unsafe {
            $crate::engine::cuda::launch::launch_raw(
                $stream, $f, $grid, $block, $shared, $pdl, &mut params,
            )
        }
    }};
}
pub(crate) use launch;
