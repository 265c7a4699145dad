//! Device buffers (allocated once) and the `Copy` views the launchers take.

use std::marker::PhantomData;
use std::ops::Range;
use std::sync::atomic::Ordering;

use cudarc::driver::{CudaSlice, DevicePtr};

use super::context::{Gpu, GpuError, arg_err, drv};

/// Element types that live on the device.
pub trait DType: Copy + Default + cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits {
    const NAME: &'static str;
}
impl DType for f32 {
    const NAME: &'static str = "f32";
}
impl DType for half::bf16 {
    const NAME: &'static str = "bf16";
}
impl DType for i32 {
    const NAME: &'static str = "i32";
}
impl DType for i64 {
    const NAME: &'static str = "i64";
}
impl DType for u8 {
    const NAME: &'static str = "u8";
}

/// A device address and a length in elements. Valid while the [`DeviceBuffer`] it came from
/// lives; launchers check lengths against dimensions, not lifetimes.
#[derive(Debug)]
pub struct DSlice<T> {
    pub(crate) ptr: u64,
    len: usize,
    _t: PhantomData<fn() -> T>,
}

impl<T> Clone for DSlice<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for DSlice<T> {}

impl<T> DSlice<T> {
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// A sub-view; errors when `r` leaves the view.
    pub fn slice(&self, r: Range<usize>) -> Result<Self, GpuError> {
        if r.start > r.end || r.end > self.len {
            return Err(arg_err(
                "DSlice::slice",
                "range",
                format!("{}..{} outside a view of {}", r.start, r.end, self.len),
            ));
        }
        Ok(Self {
            ptr: self.ptr + (r.start * std::mem::size_of::<T>()) as u64,
            len: r.end - r.start,
            _t: PhantomData,
        })
    }
    /// Reinterprets the bytes of this view as `U` (scratch reuse). Errors on misaligned sizes.
    pub fn cast<U>(&self) -> Result<DSlice<U>, GpuError> {
        let bytes = self.len * std::mem::size_of::<T>();
        let u = std::mem::size_of::<U>();
        if !bytes.is_multiple_of(u) || !self.ptr.is_multiple_of(std::mem::align_of::<U>() as u64) {
            return Err(arg_err("DSlice::cast", "view", "size or alignment mismatch"));
        }
        Ok(DSlice {
            ptr: self.ptr,
            len: bytes / u,
            _t: PhantomData,
        })
    }
    /// A null view (optional tensors of a kernel).
    pub fn null() -> Self {
        Self {
            ptr: 0,
            len: 0,
            _t: PhantomData,
        }
    }
}

/// An owned device allocation of `len` elements.
pub struct DeviceBuffer<T: DType> {
    slice: CudaSlice<T>,
    ptr: u64,
}

impl<T: DType> std::fmt::Debug for DeviceBuffer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceBuffer<{}>[{}]", T::NAME, self.slice.len())
    }
}

impl<T: DType> DeviceBuffer<T> {
    pub fn len(&self) -> usize {
        self.slice.len()
    }
    pub fn is_empty(&self) -> bool {
        self.slice.len() == 0
    }
    pub fn view(&self) -> DSlice<T> {
        DSlice {
            ptr: self.ptr,
            len: self.slice.len(),
            _t: PhantomData,
        }
    }
}

impl Gpu {
    /// Allocates `len` zeroed elements (counted in [`Gpu::allocated_bytes`]).
    pub fn alloc<T: DType>(&self, len: usize) -> Result<DeviceBuffer<T>, GpuError> {
        let slice = self
            .stream
            .alloc_zeros::<T>(len.max(1))
            .map_err(drv(format!("alloc {len} x {}", T::NAME)))?;
        let ptr = {
            let (p, _sync) = slice.device_ptr(&self.stream);
            p
        };
        self.allocated
            .fetch_add(len.max(1) * std::mem::size_of::<T>(), Ordering::Relaxed);
        Ok(DeviceBuffer { slice, ptr })
    }

    /// Copies `src` into `dst` (same length) and waits.
    pub fn upload<T: DType>(&self, dst: DSlice<T>, src: &[T]) -> Result<(), GpuError> {
        super::context::check_len("upload", "dst", dst.len(), src.len())?;
        // SAFETY: `dst` is a live allocation of `src.len()` elements (checked above).
        unsafe { cudarc::driver::result::memcpy_htod_async(dst.ptr, src, self.stream.cu_stream()) }
            .map_err(drv("memcpy host to device"))?;
        self.synchronize()
    }

    /// Copies `src` to a new host vector (waits for queued work first).
    pub fn download<T: DType>(&self, src: DSlice<T>) -> Result<Vec<T>, GpuError> {
        let mut out = vec![T::default(); src.len()];
        self.download_into(src, &mut out)?;
        Ok(out)
    }

    /// Copies `src` into `dst` (same length) with no allocation (waits for queued work first).
    pub fn download_into<T: DType>(&self, src: DSlice<T>, dst: &mut [T]) -> Result<(), GpuError> {
        super::context::check_len("download_into", "dst", dst.len(), src.len())?;
        self.synchronize()?;
        // SAFETY: `src` is a live allocation of `dst.len()` elements (checked above).
        unsafe { cudarc::driver::result::memcpy_dtoh_async(dst, src.ptr, self.stream.cu_stream()) }
            .map_err(drv("memcpy device to host"))?;
        self.synchronize()
    }

    /// Device-to-device copy of equal-length views (queued).
    pub fn copy<T: DType>(&self, dst: DSlice<T>, src: DSlice<T>) -> Result<(), GpuError> {
        super::context::check_len("copy", "dst", dst.len(), src.len())?;
        // SAFETY: both views are live allocations of the same length.
        unsafe {
            cudarc::driver::result::memcpy_dtod_async(
                dst.ptr,
                src.ptr,
                src.len() * std::mem::size_of::<T>(),
                self.stream.cu_stream(),
            )
        }
        .map_err(drv("memcpy device to device"))
    }

    /// Sets every byte of `dst` to zero (queued).
    pub fn zero<T: DType>(&self, dst: DSlice<T>) -> Result<(), GpuError> {
        // SAFETY: `dst` is a live allocation.
        unsafe {
            cudarc::driver::result::memset_d8_async(
                dst.ptr,
                0,
                dst.len() * std::mem::size_of::<T>(),
                self.stream.cu_stream(),
            )
        }
        .map_err(drv("memset"))
    }
}
