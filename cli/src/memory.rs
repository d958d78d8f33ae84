//! Memory that goes back to the system after a burst, for `serve`.
//!
//! glibc keeps the memory freed by its per-thread arenas until the top of each heap is
//! free, which a long-lived service with many threads rarely sees: measured with
//! `deephardway bench --watchers 10000`, none of the memory 10,000 watch streams took came
//! back after they closed. `malloc_trim(0)` gives back every free page of every arena;
//! `serve` calls it every [`TRIM_EVERY`]. (`up` and `worker` do not: their models want
//! freed memory kept, see `deephardway_worker::device::keep_freed_memory`.)

use std::time::Duration;

/// How often `serve` gives free pages back.
pub const TRIM_EVERY: Duration = Duration::from_secs(10);

/// Gives free memory back to the system every [`TRIM_EVERY`], for as long as the process
/// runs; nothing off glibc.
pub fn give_back_periodically() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    tokio::spawn(async {
        let mut every = tokio::time::interval(TRIM_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            // Walking the arenas takes milliseconds on a large heap: off the async threads.
            // SAFETY: malloc_trim only returns free pages to the kernel, under glibc's own
            // arena locks; it takes no pointer.
            let _ = tokio::task::spawn_blocking(|| unsafe { libc::malloc_trim(0) }).await;
        }
    });
}
