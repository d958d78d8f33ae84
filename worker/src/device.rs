//! Picking the device jobs compute on. `auto` takes the first CUDA GPU when the worker
//! was built with the `cuda` feature and one is present, and the CPU otherwise.

use anyhow::{Context, bail};
use candle_core::Device;

/// Parses `auto`, `cpu`, `cuda` or `cuda:N` into a candle device.
pub fn select(spec: &str) -> anyhow::Result<Device> {
    match spec {
        "auto" => Ok(Device::cuda_if_available(0).unwrap_or(Device::Cpu)),
        "cpu" => Ok(Device::Cpu),
        cuda if cuda == "cuda" || cuda.starts_with("cuda:") => {
            let ordinal: usize = match cuda.strip_prefix("cuda:") {
                Some(n) => n.parse().with_context(|| format!("--device {cuda}: bad GPU number"))?,
                None => 0,
            };
            if !candle_core::utils::cuda_is_available() {
                bail!("--device {cuda}: this worker was built without CUDA (cargo feature `cuda`)");
            }
            Device::new_cuda(ordinal).with_context(|| format!("--device {cuda}: no such GPU"))
        }
        other => bail!("--device {other}: expected auto, cpu, cuda or cuda:N"),
    }
}

/// The name the service shows for a device: `cpu` or `cuda:N`.
pub fn name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

/// The CPU threads candle's arithmetic uses (`--threads`, else `RAYON_NUM_THREADS`, else
/// one per physical core).
pub fn cpu_threads() -> usize {
    candle_core::utils::get_num_threads()
}

/// Makes glibc's allocator keep freed memory for reuse. candle allocates a fresh buffer
/// for every tensor operation; by default glibc maps each large one anew and unmaps it when
/// freed, so every op paid for page faults and, with worker threads, TLB shootdowns. Kept,
/// training runs 2–2.5× faster (scripts/bench-train) and generation is unchanged. Call
/// once, before threads start; elsewhere than glibc it does nothing.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt takes plain integers and only sets allocator parameters, which glibc
    // reads under its own lock; callers make it before other threads allocate.
    unsafe {
        // Allocations up to glibc's largest threshold (32 MiB) come from the heap, which
        // is not trimmed back to the kernel below 1 GiB of free space at its top.
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn devices_parse_and_name() {
        assert_eq!(super::name(&super::select("cpu").unwrap()), "cpu");
        let auto = super::name(&super::select("auto").unwrap());
        assert!(auto == "cpu" || auto.starts_with("cuda:"), "{auto}");
        assert!(super::select("tpu").is_err());
        assert!(super::select("cuda:x").is_err());
    }
}
