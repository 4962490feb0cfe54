use std::process::ExitCode;

use clap::Parser;
use nfs_subdir_provisioner::{config, run, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    let config = match config::Args::parse().into_config() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("nfs-subdir-provisioner: {err}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(config.log_format);
    // Every error's message already names what was attempted and why it failed: one line.
    match run::run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("nfs-subdir-provisioner: {err}");
            ExitCode::FAILURE
        }
    }
}
