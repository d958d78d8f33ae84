//! The `deephardway` binary; see [`deephardway_service::cli`].

fn main() -> std::process::ExitCode {
    let cli = deephardway_service::cli::parse();
    // candle sizes its thread pools from RAYON_NUM_THREADS and, without it, works out the
    // physical core count again from /proc at every parallel op. Settle it once: --threads,
    // else what candle would use (the variable as given, else one per physical core).
    let threads = cli.threads().unwrap_or_else(deephardway_worker::device::cpu_threads);
    // SAFETY: no other thread exists yet (the runtime starts below), so nothing can read
    // the environment while it changes.
    unsafe { std::env::set_var("RAYON_NUM_THREADS", threads.to_string()) };
    deephardway_worker::device::keep_freed_memory();
    let runtime = tokio::runtime::Runtime::new().expect("start the tokio runtime");
    match runtime.block_on(deephardway_service::cli::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
