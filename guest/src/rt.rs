//! What std would supply on wasm32: an allocator (dlmalloc), a panic handler, and the
//! `memcmp`/`bcmp` symbols compiler-generated code calls (wasi-libc is not
//! linked in a `no_std` component).

#[global_allocator]
static ALLOC: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

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
