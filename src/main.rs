use clap::Parser;
use nfs_subdir_provisioner::{config, run, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = match config::Args::parse().into_config() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("nfs-subdir-provisioner: {err}");
            std::process::exit(2);
        }
    };
    telemetry::init(config.log_format);
    run::run(config).await
}
