//! `picolet`: the host side of picolet, three programs in one binary.
//!
//! - the admin commands ([`admin`]): `picolet enrol` gives a node its identity through the
//!   Kubernetes CSR API, `picolet token` a bootstrap token instead, `picolet approve` approves
//!   nodes' serving certificates, `picolet board-config` writes one board's settings as a UF2
//!   for its configuration sector;
//! - the virtual node, `picolet run`: the same `picolet-core` agent the firmware runs, as a
//!   real node of a real cluster ([`run`], [`bootstrap`] for joining with a token);
//! - the PPP link, `picolet link` ([`link`]): the host end of a `picolet-serial` board's link.

mod admin;
mod credentials;
mod link;
mod node;
mod tls;

use std::ffi::OsStr;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use picolet_core::agent::ConfigMode;

use admin::{approve, board_config, enrol, kubeconfig, token};

#[derive(Parser)]
#[command(
    version,
    about = "Raspberry Pi Pico W nodes for Kubernetes: enrolment and the virtual Pico"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Mode {
    /// Follow the ConfigMap with the Watch API (polling when watches are refused).
    Watch,
    /// List the ConfigMap every 30 s.
    Poll,
}

#[derive(Subcommand)]
enum Command {
    /// Create a node identity with an admin kubeconfig: key, CSR, approval, RBAC, credentials.
    Enrol {
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Create a short-lived bootstrap token for one node and write that node's directory
    /// (no key: the node makes its own and gets its certificate through the CSR API).
    Token {
        #[command(flatten)]
        node: NodeArgs,
        /// How long the token is valid.
        #[arg(long, default_value_t = 60, value_name = "MINUTES")]
        ttl: u64,
    },
    /// Approve picolet nodes' kubelet-serving CSRs that pass the checks (requested by the node
    /// itself, for its own name and the addresses its Node publishes).
    Approve {
        /// Admin kubeconfig (default: the files in KUBECONFIG, merged, else ~/.kube/config).
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        /// Only this node's requests (default: every node's).
        #[arg(long)]
        node_name: Option<String>,
        /// Keep looking until one request was approved, for up to this many seconds.
        #[arg(long, default_value_t = 0, value_name = "SECONDS")]
        wait: u64,
    },
    /// Run a virtual Pico node until Ctrl-C.
    Run(RunArgs),
    /// Be the host end of a picolet-serial board's PPP link, until Ctrl-C.
    Link(LinkArgs),
    /// Write one board's settings and credentials as a UF2 for its flash configuration sector
    /// (flash it after the firmware: one firmware UF2 then serves every board).
    BoardConfig {
        /// Credentials directory written by `picolet enrol` for this board
        /// (default: ~/.config/picolet/credentials/pico-node-1, or under XDG_CONFIG_HOME).
        #[arg(long)]
        credentials: Option<PathBuf>,
        /// The API server as the board reaches it (IPv4:PORT; 10.42.0.1:6443 over `picolet link`).
        #[arg(long)]
        api_server: std::net::SocketAddrV4,
        /// Wi-Fi network name (not needed by the serial-link firmware).
        #[arg(long, default_value = "")]
        wifi_ssid: String,
        /// Wi-Fi passphrase (or set PICOLET_WIFI_PASSWORD).
        #[arg(
            long,
            env = "PICOLET_WIFI_PASSWORD",
            default_value = "",
            hide_env_values = true
        )]
        wifi_password: String,
        /// The UF2 to write (holds the board's private key; written mode 0600).
        #[arg(long)]
        out: PathBuf,
    },
}

/// Who a node is and where its directory goes: shared by `enrol` and `token`.
#[derive(Args)]
struct NodeArgs {
    /// Admin kubeconfig, used once, never stored (default: the files in KUBECONFIG, merged,
    /// else ~/.kube/config).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    #[arg(long, default_value = DEFAULT_NODE)]
    node_name: String,
    /// Where to write the node's directory (default:
    /// ~/.config/picolet/credentials/NODE_NAME, or under XDG_CONFIG_HOME).
    #[arg(long)]
    out: Option<PathBuf>,
    /// API server URL the node should use (default: the kubeconfig's server).
    #[arg(long)]
    server: Option<String>,
    /// DNS name checked in the API server's certificate.
    #[arg(long, default_value = "kubernetes")]
    tls_server_name: String,
    #[arg(long, default_value = "default")]
    config_namespace: String,
    #[arg(long, default_value = "pico-config")]
    config_map: String,
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error(transparent)]
    Credentials(#[from] credentials::CredentialsError),
    #[error(transparent)]
    Kubeconfig(#[from] kubeconfig::KubeconfigError),
    #[error(transparent)]
    Admin(#[from] admin::AdminError),
    #[error("no kubelet-serving request was approved")]
    NoneApproved,
    #[error(transparent)]
    BoardConfig(#[from] board_config::BoardConfigError),
    #[error(transparent)]
    Run(#[from] node::RunError),
    #[error(transparent)]
    Link(#[from] link::LinkError),
    #[error("the link stopped: {0}")]
    LinkTask(#[from] tokio::task::JoinError),
}

/// The node name `enrol` and `token` default to, and whose directory `run` and `board-config`
/// read by default.
const DEFAULT_NODE: &str = "pico-node-1";

impl NodeArgs {
    /// The directory to write, absolute so that what is printed can be used from anywhere.
    fn out_dir(&self) -> Result<PathBuf, credentials::CredentialsError> {
        let dir = match &self.out {
            Some(o) => o.clone(),
            None => credentials::default_dir_from_env(&self.node_name)?,
        };
        Ok(absolute(dir))
    }

    /// The admin kubeconfig files, found as kubectl finds them.
    fn kubeconfig(&self) -> Result<Vec<PathBuf>, kubeconfig::KubeconfigError> {
        kubeconfig::locate_from_env(self.kubeconfig.as_deref())
    }

    /// The node for `enrol` and `token`, its directory at `out_dir`.
    fn target(self, out_dir: PathBuf) -> Result<admin::NodeTarget, CliError> {
        Ok(admin::NodeTarget {
            kubeconfig: self.kubeconfig()?,
            node_name: self.node_name,
            out_dir,
            server: self.server,
            tls_server_name: self.tls_server_name,
            config_namespace: self.config_namespace,
            config_map: self.config_map,
        })
    }
}

/// `path` made absolute against the current directory (as given when that fails), so messages
/// say exactly where a file was looked for.
fn absolute(path: PathBuf) -> PathBuf {
    std::path::absolute(&path).unwrap_or(path)
}

/// The credentials directory `run` and `board-config` read: the one given, else the default
/// (see [`credentials::dir_to_read`]); absolute, and logged, so a miss says where it looked.
fn credentials_to_read(given: Option<&Path>) -> Result<PathBuf, credentials::CredentialsError> {
    let (dir, legacy) = credentials::dir_to_read(
        given,
        DEFAULT_NODE,
        credentials::default_dir_from_env(DEFAULT_NODE),
        Path::exists,
    )?;
    let dir = absolute(dir);
    if legacy {
        tracing::warn!(
            "using {} (the old default, relative to the current directory); move it to {} \
             or pass --credentials",
            dir.display(),
            credentials::default_dir_from_env(DEFAULT_NODE)
                .map_or_else(|e| e.to_string(), |d| d.display().to_string())
        );
    }
    Ok(dir)
}

/// Whether log lines carry ANSI colours: only on a terminal, and not when `NO_COLOR` is set to
/// anything non-empty (no-color.org), so log files and pipes get plain text.
fn log_colours(is_terminal: bool, no_color: Option<&OsStr>) -> bool {
    is_terminal && no_color.is_none_or(|v| v.is_empty())
}

#[derive(Args)]
struct LinkArgs {
    /// The board's serial device (set its speed first: stty -F DEV 115200 raw -echo).
    #[arg(
        long,
        conflicts_with = "serial_tcp",
        required_unless_present = "serial_tcp"
    )]
    serial: Option<PathBuf>,
    /// A TCP address carrying the serial bytes instead (the RP2040 emulator's UART).
    #[arg(long)]
    serial_tcp: Option<std::net::SocketAddr>,
    /// The host's address on the link: the board's `api_server` address.
    #[arg(long, default_value = "10.42.0.1")]
    host_address: std::net::Ipv4Addr,
    /// The address given to the board.
    #[arg(long, default_value = "10.42.0.2")]
    board_address: std::net::Ipv4Addr,
    /// The port the board dials for the API server on the host's link address.
    #[arg(long, default_value_t = 6443)]
    api_port: u16,
    /// Where the API server really is.
    #[arg(long, default_value = "127.0.0.1:6443")]
    api_server: std::net::SocketAddr,
    /// Where host clients (the API server, Prometheus) reach the board's kubelet port.
    #[arg(long, default_value = "127.0.0.1:10250")]
    kubelet_listen: std::net::SocketAddr,
}

impl From<LinkArgs> for link::LinkOptions {
    fn from(a: LinkArgs) -> Self {
        link::LinkOptions {
            serial: match (a.serial, a.serial_tcp) {
                (Some(path), _) => link::SerialEndpoint::Device(path),
                // clap requires one of the two.
                (None, Some(addr)) => link::SerialEndpoint::Tcp(addr),
                (None, None) => link::SerialEndpoint::Device(PathBuf::from("/dev/ttyUSB0")),
            },
            host_address: a.host_address,
            board_address: a.board_address,
            api_port: a.api_port,
            api_server: a.api_server,
            kubelet_listen: a.kubelet_listen,
        }
    }
}

#[derive(Args)]
struct RunArgs {
    /// Credentials directory written by `picolet enrol` (default:
    /// ~/.config/picolet/credentials/pico-node-1, or under XDG_CONFIG_HOME).
    #[arg(long)]
    credentials: Option<PathBuf>,
    /// InternalIP to publish; the kubelet port listens there.
    #[arg(long, default_value = "127.0.0.1")]
    node_ip: String,
    #[arg(long, default_value_t = 10250)]
    kubelet_port: u16,
    /// Serve the kubelet port over plain HTTP (default: HTTPS).
    #[arg(long)]
    kubelet_plain_http: bool,
    #[arg(long, default_value = "default")]
    config_namespace: String,
    #[arg(long, default_value = "pico-config")]
    config_map: String,
    /// Longest time between node status PATCHes when nothing changed (min 10).
    #[arg(long, default_value_t = 300, value_name = "SECONDS")]
    status_report_interval: u64,
    #[arg(long, value_enum, default_value = "watch")]
    config_mode: Mode,
    /// timeoutSeconds asked for each watch (the ConfigMap's and the pods'); a kubelet's
    /// watches last 5-10 minutes.
    #[arg(long, default_value_t = 600, value_name = "SECONDS")]
    watch_timeout: u64,
    /// node.kubernetes.io/instance-type label.
    #[arg(long, default_value = "virtual-pico-w")]
    instance_type: String,
    /// Do not renew the client certificate through the CSR API (it is renewed by default at
    /// 70-80 % of its lifetime, as a kubelet with rotateCertificates does).
    #[arg(long)]
    no_certificate_rotation: bool,
    /// Where the kubelet port's certificate comes from: a kubelet-serving CSR (approve it with
    /// `picolet approve`; self-signed until then), or self-signed only.
    #[arg(long, value_enum, default_value = "csr")]
    serving_certificate: Serving,
    /// Which TLS server runs the kubelet port: rustls, or the Pico's own (to test it with
    /// real clients such as the API server).
    #[arg(long, value_enum, default_value = "rustls")]
    kubelet_tls: KubeletTls,
}

#[derive(Clone, Copy, ValueEnum)]
enum KubeletTls {
    /// rustls.
    Rustls,
    /// picolet_device::tls_server, as on the Pico.
    Device,
}

#[derive(Clone, Copy, ValueEnum)]
enum Serving {
    /// A kubernetes.io/kubelet-serving CSR.
    Csr,
    /// A self-signed certificate.
    SelfSigned,
}

impl RunArgs {
    fn options(self, credentials: PathBuf) -> node::RunOptions {
        let a = self;
        node::RunOptions {
            credentials,
            node_ip: a.node_ip,
            kubelet_port: a.kubelet_port,
            kubelet_plain_http: a.kubelet_plain_http,
            config_namespace: a.config_namespace,
            config_map: a.config_map,
            status_report_interval: Duration::from_secs(a.status_report_interval.max(10)),
            config_mode: match a.config_mode {
                Mode::Watch => ConfigMode::Watch,
                Mode::Poll => ConfigMode::Poll,
            },
            watch_timeout: Duration::from_secs(a.watch_timeout.max(1)),
            instance_type: a.instance_type,
            rotate_client_certificate: !a.no_certificate_rotation,
            serving_certificate: match a.serving_certificate {
                Serving::Csr => node::ServingSource::Csr,
                Serving::SelfSigned => node::ServingSource::SelfSigned,
            },
            device_tls: matches!(a.kubelet_tls, KubeletTls::Device),
        }
    }
}

/// Runs one command.
async fn execute(command: Command) -> Result<(), CliError> {
    match command {
        Command::Enrol { node } => {
            let out_dir = node.out_dir()?;
            let opts = enrol::EnrolOptions {
                node: node.target(out_dir.clone())?,
                timeout: Duration::from_secs(60),
            };
            let c = enrol::enrol(&opts).await?;
            println!(
                "enrolled system:node:{} for {}; credentials in {}",
                c.identity.node_name,
                c.identity.server,
                out_dir.display()
            );
            Ok(())
        }
        Command::Token { node, ttl } => {
            let out_dir = node.out_dir()?;
            let node_name = node.node_name.clone();
            let opts = token::TokenOptions {
                node: node.target(out_dir.clone())?,
                ttl: Duration::from_secs(ttl.max(1) * 60),
            };
            let token = token::create_token(&opts).await?;
            let id = token.split('.').next().unwrap_or_default();
            println!(
                "bootstrap token {id}.… for {node_name}, valid {ttl} min, written to {}; \
                 `picolet run --credentials {}` joins with it \
                 (revoke: kubectl -n kube-system delete secret bootstrap-token-{id})",
                out_dir.join(node::join::TOKEN_FILE).display(),
                out_dir.display()
            );
            Ok(())
        }
        Command::Approve {
            kubeconfig,
            node_name,
            wait,
        } => {
            let opts = approve::ApproveOptions {
                kubeconfig: kubeconfig::locate_from_env(kubeconfig.as_deref())?,
                node_name,
                wait: Duration::from_secs(wait),
            };
            let verdicts = approve::approve(&opts).await?;
            for v in &verdicts {
                match &v.refused {
                    None => println!("approved {}", v.csr),
                    Some(why) => println!("left pending {}: {why}", v.csr),
                }
            }
            if verdicts.iter().any(|v| v.refused.is_none()) {
                Ok(())
            } else {
                Err(CliError::NoneApproved)
            }
        }
        Command::Run(args) => {
            let dir = credentials_to_read(args.credentials.as_deref())?;
            tracing::info!("credentials: {}", dir.display());
            node::run(args.options(dir)).await.map_err(CliError::Run)
        }
        Command::BoardConfig {
            credentials,
            api_server,
            wifi_ssid,
            wifi_password,
            out,
        } => {
            let opts = board_config::BoardConfigOptions {
                credentials: credentials_to_read(credentials.as_deref())?,
                api_server,
                wifi_ssid,
                wifi_password,
                out: out.clone(),
            };
            let node = board_config::write(&opts)?;
            println!(
                "{}: configuration for {node}; flash it after the firmware \
                 (BOOTSEL, copy), or: picotool load {}",
                out.display(),
                out.display()
            );
            Ok(())
        }
        Command::Link(args) => {
            let opts: link::LinkOptions = args.into();
            tokio::task::spawn_blocking(move || link::run(&opts)).await??;
            Ok(())
        }
    }
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PICOLET_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(log_colours(
            std::io::stderr().is_terminal(),
            std::env::var_os("NO_COLOR").as_deref(),
        ))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("picolet: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let result = runtime.block_on(execute(Cli::parse().command));
    if let Err(e) = result {
        eprintln!("picolet: {e}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_are_coloured_only_on_a_terminal_without_no_color() {
        assert!(log_colours(true, None));
        assert!(log_colours(true, Some(OsStr::new(""))));
        assert!(!log_colours(true, Some(OsStr::new("1"))));
        assert!(!log_colours(false, None));
        assert!(!log_colours(false, Some(OsStr::new(""))));
    }
}
