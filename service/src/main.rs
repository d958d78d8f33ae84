//! The `deephardway` binary; see [`deephardway_service::cli`].

fn main() -> std::process::ExitCode {
    let cli = deephardway_service::cli::parse();
    if let Some(threads) = cli.threads() {
        // SAFETY: no other thread exists yet (the runtime starts below), so nothing can
        // read the environment while it changes. candle's thread pools size themselves
        // from this variable when they first start.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", threads.to_string()) };
    }
    let runtime = tokio::runtime::Runtime::new().expect("start the tokio runtime");
    match runtime.block_on(deephardway_service::cli::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
