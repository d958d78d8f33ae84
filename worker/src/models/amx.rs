//! Intel AMX (Advanced Matrix Extensions): whether this process may use it, and its tile
//! configuration. `sgemm`'s bfloat16 linear layers use it where it is there.
//!
//! AMX adds eight tile registers (up to 16 rows of 64 bytes each) and instructions that
//! multiply two tiles into a third: 16 × 16 sums of 32 bfloat16 or 64 int8 products
//! each, in one instruction. Linux hands the 8 KiB of tile state to a process only on
//! request (`arch_prctl(ARCH_REQ_XCOMP_PERM)`): [`available`] makes it once; without it
//! (an older kernel, a CPU without AMX, or `DEEPHARDWAY_NO_AMX=1` in the environment)
//! every caller keeps its other kernels (AVX-512 BF16, AVX-512 or AVX2).

use std::sync::OnceLock;

/// An AMX instruction set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Feature {
    /// `tdpbf16ps`; the rounding of inputs also uses AVX-512 BF16.
    Bf16,
    /// `tdpbssd` and its kin (int8 products summed in i32); the quantized products'
    /// scaling also uses AVX-512F and AVX-512BW.
    Int8,
}

/// Whether this CPU has `feature` and this process may use AMX (asked of Linux once).
pub fn available(feature: Feature) -> bool {
    static GRANTED: OnceLock<bool> = OnceLock::new();
    *GRANTED.get_or_init(granted) && has(feature)
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn has(feature: Feature) -> bool {
    use std::arch::is_x86_feature_detected as x86;
    // CPUID leaf 7 (present wherever AVX-512F is): EDX bit 24 AMX-TILE, 22 AMX-BF16,
    // 25 AMX-INT8.
    if !x86!("avx512f") {
        return false;
    }
    #[allow(unused_unsafe)] // `__cpuid_count` is safe in newer Rust
    // SAFETY: CPUID is available on every x86-64 CPU.
    let edx = unsafe { std::arch::x86_64::__cpuid_count(7, 0) }.edx;
    let bit = |b: u32| edx & (1 << b) != 0;
    bit(24)
        && match feature {
            Feature::Bf16 => bit(22) && x86!("avx512bf16"),
            Feature::Int8 => bit(25) && x86!("avx512bw"),
        }
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn granted() -> bool {
    if std::env::var_os("DEEPHARDWAY_NO_AMX").is_some() || !(has(Feature::Bf16) || has(Feature::Int8)) {
        return false;
    }
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: arch_prctl with this request only asks for a permission; it reads and
    // writes no memory of ours.
    unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn has(_: Feature) -> bool {
    false
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn granted() -> bool {
    false
}

/// A tile configuration (palette 1): for each of the eight tiles, its rows and bytes per
/// row (a tile left at zero is unused).
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug)]
pub struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    bytes_per_row: [u16; 16],
    rows: [u8; 16],
}

impl TileConfig {
    /// `shapes[t]`: tile `t`'s rows (at most 16) and bytes per row (at most 64).
    pub const fn new(shapes: [(u8, u16); 8]) -> Self {
        let mut config =
            TileConfig { palette: 1, start_row: 0, reserved: [0; 14], bytes_per_row: [0; 16], rows: [0; 16] };
        let mut t = 0;
        while t < 8 {
            assert!(shapes[t].0 <= 16 && shapes[t].1 <= 64, "a tile is at most 16 rows of 64 bytes");
            config.rows[t] = shapes[t].0;
            config.bytes_per_row[t] = shapes[t].1;
            t += 1;
        }
        config
    }

    /// Loads this configuration on the calling thread (zeroing its tiles).
    ///
    /// # Safety
    ///
    /// [`available`] must have returned true for a feature the caller then uses.
    pub unsafe fn load(&self) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: reads the 64-byte configuration; AMX is there (the caller's promise).
        unsafe {
            std::arch::asm!("ldtilecfg [{}]", in(reg) self, options(nostack, readonly))
        };
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("no AMX off x86-64");
    }
}

/// Releases the calling thread's tiles (their state is no longer saved on context
/// switches).
///
/// # Safety
///
/// As for [`TileConfig::load`].
pub unsafe fn release() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: AMX is there (the caller's promise).
    unsafe {
        std::arch::asm!("tilerelease", options(nostack, nomem))
    };
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("no AMX off x86-64");
}
