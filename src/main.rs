use clap::Parser;
use nfs_subdir_provisioner::config::{Args, Command};
use nfs_subdir_provisioner::{check, run, telemetry};

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let command = args.command();
    let config = match args.into_config() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("nfs-subdir-provisioner: {err}");
            std::process::exit(2);
        }
    };
    telemetry::init(config.log_format);
    let code = match command {
        Command::Check => {
            let items = check::run(&config).await;
            print!("{}", check::render(&items));
            i32::from(!items.iter().all(|i| i.ok))
        }
        // Every error's message already names what was attempted and why it failed: one line.
        Command::Run => match run::run(config).await {
            Ok(()) => 0,
            Err(err) => {
                eprintln!("nfs-subdir-provisioner: {err}");
                1
            }
        },
    };
    // Exit here rather than return: dropping the runtime would wait for blocking threads, and one
    // stuck in a syscall on a hung NFS export never returns.
    std::process::exit(code);
}
