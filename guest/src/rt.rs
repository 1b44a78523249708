//! What std would supply on wasm32: an allocator (dlmalloc), a panic handler, and the
//! `memcmp`/`bcmp` symbols compiler-generated code calls (wasi-libc is not
//! linked in a `no_std` component).

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;

use dlmalloc::Dlmalloc;

#[global_allocator]
static ALLOC: Allocator = Allocator(UnsafeCell::new(None));

/// dlmalloc, called exactly as `dlmalloc::GlobalDlmalloc` calls it, but with
/// its state created on first use. `GlobalDlmalloc`'s static state has a few
/// non-zero fields, which put all of its ~460 bytes into the component's data
/// segment; a `None` is all zeros and takes no space there.
struct Allocator(UnsafeCell<Option<Dlmalloc>>);

// SAFETY: a component instance is single-threaded (`GlobalDlmalloc`'s lock is
// a no-op on this target for the same reason).
unsafe impl Sync for Allocator {}

impl Allocator {
    /// # Safety
    /// No other reference to the state may be live: the allocator is not
    /// reentrant (dlmalloc never calls back into it).
    #[allow(clippy::mut_from_ref)]
    unsafe fn dlmalloc(&self) -> &mut Dlmalloc {
        // SAFETY: single-threaded and not reentrant, per the contract.
        unsafe { (*self.0.get()).get_or_insert_with(Dlmalloc::new) }
    }
}

// SAFETY: each method forwards to dlmalloc with the layout's size and
// alignment, as `GlobalDlmalloc` does.
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        unsafe { self.dlmalloc().malloc(layout.size(), layout.align()) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { self.dlmalloc().free(ptr, layout.size(), layout.align()) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        unsafe { self.dlmalloc().calloc(layout.size(), layout.align()) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        unsafe {
            self.dlmalloc()
                .realloc(ptr, layout.size(), layout.align(), new_size)
        }
    }
}

/// A panic is a bug in the engine: trap, and let the host rebuild the instance.
#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    core::arch::wasm32::unreachable()
}

/// `memcmp` for slice and string comparisons. compiler_builtins only exports
/// it where a libc is expected to; a `no_std` component links none.
///
/// # Safety
/// `a` and `b` must be valid for reads of `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    let mut i = 0;
    while i < n {
        // SAFETY: i < n and the caller guarantees n readable bytes at both.
        let (x, y) = unsafe { (*a.add(i), *b.add(i)) };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
        i += 1;
    }
    0
}

/// `bcmp`: equality-only `memcmp`, which LLVM emits for `==` on slices.
///
/// # Safety
/// As for [`memcmp`].
#[no_mangle]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract.
    unsafe { memcmp(a, b, n) }
}

/// The canonical ABI's allocator entry point: the host calls it to place
/// strings and lists in guest memory. (wit-bindgen only links its own copy
/// when built with std.) Allocation failure traps, which the host treats as a
/// guest fault.
///
/// # Safety
/// Called by the host per the component-model canonical ABI: `old_ptr` is null
/// or a live allocation of `old_len` bytes at `align`.
#[no_mangle]
pub unsafe extern "C" fn cabi_realloc(
    old_ptr: *mut u8,
    old_len: usize,
    align: usize,
    new_len: usize,
) -> *mut u8 {
    use alloc::alloc::{alloc, realloc, Layout};
    if new_len == 0 {
        // A zero-sized allocation: any aligned non-null pointer will do.
        return align as *mut u8;
    }
    // SAFETY: the canonical ABI passes a power-of-two `align`, and `old_*`
    // describe an allocation this function made.
    let ptr = unsafe {
        if old_len == 0 {
            alloc(Layout::from_size_align_unchecked(new_len, align))
        } else {
            realloc(
                old_ptr,
                Layout::from_size_align_unchecked(old_len, align),
                new_len,
            )
        }
    };
    if ptr.is_null() {
        core::arch::wasm32::unreachable();
    }
    ptr
}
