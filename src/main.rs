use clap::Parser;
use nfs_subdir_provisioner::config::{Args, Command, Output};
use nfs_subdir_provisioner::operator::{self, render};
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
    // Every error's message already names what was attempted and why it failed: one line.
    let failed = |err: &dyn std::fmt::Display| {
        eprintln!("nfs-subdir-provisioner: {err}");
        1
    };
    let code = match command {
        Command::Check => {
            let items = check::run(&config).await;
            print!("{}", check::render(&items));
            i32::from(!items.iter().all(|i| i.ok))
        }
        Command::Volumes(args) => match operator::volumes(&config, &args).await {
            Ok(report) => {
                print!(
                    "{}",
                    match args.output {
                        Output::Table => render::volumes_table(&report),
                        Output::Json => render::json(&report),
                    }
                );
                i32::from(report.incomplete())
            }
            Err(err) => failed(&err),
        },
        Command::PruneArchives(args) => match operator::prune(&config, &args).await {
            Ok(report) => {
                print!(
                    "{}",
                    match args.output {
                        Output::Table => render::prune_table(&report),
                        Output::Json => render::json(&report),
                    }
                );
                i32::from(report.failed())
            }
            Err(err) => failed(&err),
        },
        Command::Run => match run::run(config).await {
            Ok(()) => 0,
            Err(err) => failed(&err),
        },
    };
    // Exit here rather than return: dropping the runtime would wait for blocking threads, and one
    // stuck in a syscall on a hung NFS export never returns.
    std::process::exit(code);
}
