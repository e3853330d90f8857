//! `testplane up`: starts the throwaway control plane and keeps it running until Ctrl-C or
//! SIGTERM, then stops every process. Used by `scripts/demo.sh`.

use std::path::PathBuf;
use std::sync::mpsc;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "A throwaway real Kubernetes control plane on 127.0.0.1 (tests and demo only)")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start etcd, kube-apiserver and kube-controller-manager; print the admin kubeconfig path.
    Up {
        /// Keep certificates, kubeconfigs and logs here.
        #[arg(long)]
        state_dir: PathBuf,
        /// Node lifecycle grace period in seconds.
        #[arg(long, default_value_t = 25)]
        grace_period: u32,
    },
}

fn main() {
    let Cmd::Up {
        state_dir,
        grace_period,
    } = Cli::parse().command;
    let (tx, rx) = mpsc::channel();
    if let Err(e) = ctrlc::set_handler(move || {
        let _ = tx.send(());
    }) {
        eprintln!("testplane: cannot install a signal handler: {e}");
        std::process::exit(1);
    }
    let opts = testplane::Options {
        node_monitor_grace_period_s: grace_period,
        state_dir: Some(state_dir),
        ..testplane::Options::default()
    };
    let plane = match testplane::ControlPlane::start(opts) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("testplane: {e}");
            std::process::exit(1);
        }
    };
    let ready = plane.dir().join("ready");
    let _ = std::fs::write(&ready, format!("{}\n", plane.server()));
    println!(
        "control plane ready at {}; admin kubeconfig: {}",
        plane.server(),
        plane.admin_kubeconfig().display()
    );
    let _ = rx.recv();
    let _ = std::fs::remove_file(ready);
    drop(plane);
    println!("control plane stopped");
}
