//! The `deephardway` binary; see [`deephardway_service::cli`].

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match deephardway_service::cli::main().await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
