//! `deephardway`: one binary for every role. It composes the role libraries, which
//! build and test on their own, and adds only the command line:
//!
//! - [`cli`]: the subcommands and their dispatch;
//! - [`server`]: `up` (everything on one machine) and `serve` (the service alone, on the
//!   embedded store or etcd), from `deephardway-service`;
//! - [`worker`]: `worker`, and the local worker `up` starts, from `deephardway-worker`;
//! - [`client`]: `submit`, `watch`, `cancel`, `jobs`, `models`, `datasets`: a client of
//!   the gRPC API like any other;
//! - [`bench`](mod@bench): job throughput on each store, and model speed;
//! - [`tls`]: the client side's TLS flags (`--ca-cert`, `--client-cert`, `--client-key`);
//! - [`signal`], [`logging`], [`telemetry`], [`memory`], [`file_limit`]: process plumbing
//!   shared by the roles (logs, traces over OTLP, memory given back by `serve`, a
//!   connection limit within the file limit).

mod access;
mod bench;
mod cli;
mod client;
mod file_limit;
mod logging;
mod memory;
mod server;
mod signal;
mod telemetry;
mod tls;
mod worker;

fn main() -> std::process::ExitCode {
    let cli = cli::parse();
    // candle sizes its thread pools from RAYON_NUM_THREADS and, without it, works out the
    // physical core count again from /proc at every parallel op. Settle it once: --threads,
    // else what candle would use (the variable as given, else one per physical core).
    let threads = cli.threads().unwrap_or_else(deephardway_worker::device::cpu_threads);
    // SAFETY: no other thread exists yet (the runtime starts below), so nothing can read
    // the environment while it changes.
    unsafe { std::env::set_var("RAYON_NUM_THREADS", threads.to_string()) };
    // Keeping freed memory makes candle's training 2-2.5x faster, but a process that does
    // it never gives memory back to the system. Only the commands that run models want
    // that trade; `serve` (a long-lived service whose memory must return after a burst)
    // and the client commands keep glibc's default.
    if cli.runs_models() {
        deephardway_worker::device::keep_freed_memory();
    }
    let runtime = tokio::runtime::Runtime::new().expect("start the tokio runtime");
    match runtime.block_on(cli::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
