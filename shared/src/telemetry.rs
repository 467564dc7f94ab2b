//! Logging set-up shared by every binary: human-readable by default, JSON lines for log shippers.

use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

#[derive(Debug, Clone, Default, clap::Args)]
pub struct LogArgs {
    /// Log format.
    #[arg(
        long,
        env = "HARMONIA_LOG_FORMAT",
        value_enum,
        default_value_t,
        global = true
    )]
    pub log_format: LogFormat,
    /// Log filter in RUST_LOG syntax, e.g. `info,harmonia_worker=debug`.
    #[arg(long, env = "HARMONIA_LOG", default_value = "info", global = true)]
    pub log: String,
}

/// Installs the global subscriber; logs go to stderr so stdout stays machine-readable.
pub fn init(args: &LogArgs) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(&args.log)
        .map_err(|e| anyhow::anyhow!("invalid setting `log` ({:?}): {e}", args.log))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match args.log_format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("installing the log subscriber: {e}"))
}

/// A binary's `main` body: the async runtime, logging, then `body`; an error ends the process
/// with one line on stderr (its whole `anyhow` context chain) and exit code 1, never a panic.
/// Called from a plain `fn main`, so that a binary can set up its process (an allocator
/// parameter, the environment) while it still has one thread.
pub fn run_main<F>(log: &LogArgs, body: F) -> std::process::ExitCode
where
    F: std::future::Future<Output = anyhow::Result<std::process::ExitCode>>,
{
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        init(log)?;
        body.await
    });
    result.unwrap_or_else(|e| {
        eprintln!("error: {e:#}");
        std::process::ExitCode::FAILURE
    })
}
