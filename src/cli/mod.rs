//! The `caracal` command line (REFERENCE 6):
//! - `caracal --config FILE [--set dotted.key=value ...]` runs a node;
//! - `caracal check --config FILE [--set ...]` validates and exits.
//!
//! Exit codes: 0 ok, 1 runtime failure (e.g. a port in use), 2 bad config.

mod status;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

use crate::config;

#[derive(Parser, Debug)]
#[command(
    name = "caracal",
    version,
    about = "Reverse-proxy load balancer with replicated sessions"
)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: NodeArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Validate a config file and exit (0 = valid, 2 = invalid).
    Check(NodeArgs),
    /// Run a local demo cluster with demo backends on loopback and print what to try.
    Demo {
        /// HTTP port of node1 (node2 and node3 use the next two).
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// Admin port of node1 (node2 and node3 use the next two).
        #[arg(long, default_value_t = 9090)]
        admin_port: u16,
        /// The first demo backend's port (the second uses the next one).
        #[arg(long, default_value_t = 9001)]
        backend_port: u16,
        /// Mutual TLS on the mesh, with certificates made for the run (`caracal certs`).
        #[arg(long)]
        tls: bool,
    },
    /// Write a cluster CA and one certificate per node for `[cluster.tls]` (mutual TLS on
    /// the mesh): DIR/ca.pem, DIR/ca-key.pem, DIR/<node>.pem, DIR/<node>-key.pem. Each
    /// node's name must be its jvm_route.
    Certs {
        #[arg(long)]
        out: PathBuf,
        /// Comma-separated node names (jvm_routes), e.g. node1,node2,node3.
        #[arg(long, value_delimiter = ',', required = true)]
        nodes: Vec<String>,
    },
    /// Print the cluster as a table (members, sessions, backends) from a node's `/status`.
    Status {
        /// The node's admin listener.
        #[arg(long, default_value = "127.0.0.1:9090")]
        admin: String,
    },
    /// Run the stateless demo app (uses sessions only through the X-Session headers).
    DemoBackend {
        #[arg(long, default_value = "127.0.0.1:9001")]
        listen: std::net::SocketAddr,
        /// Name shown on its pages.
        #[arg(long, default_value = "backend1")]
        name: String,
    },
}

#[derive(Args, Debug, Clone)]
pub(crate) struct NodeArgs {
    /// The conf file.
    #[arg(long, short = 'c', default_value = "conf/caracal.toml")]
    config: PathBuf,
    /// Override one key, e.g. `--set node.jvm_route=node2` (TOML value syntax; a bare word
    /// is a string). May be repeated.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(ValueEnum, Debug, Clone, Copy)]
enum LogFormat {
    Text,
    Json,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Check(args)) => match config::load(&args.config, &args.set) {
            Ok(cfg) => {
                // A closed stdout is no reason to panic: the exit code says it all.
                let _ = writeln!(
                    std::io::stdout(),
                    "{}: ok (jvm_route {}, {} backend(s))",
                    args.config.display(),
                    cfg.node.jvm_route,
                    cfg.backends.servers.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("caracal: config error: {e}");
                ExitCode::from(2)
            }
        },
        Some(Command::Demo {
            port,
            admin_port,
            backend_port,
            tls,
        }) => {
            init_logging(LogFormat::Text, "info");
            let ports = crate::demo::DemoPorts {
                http: port,
                admin: admin_port,
                backend: backend_port,
            };
            block_on_with_signals(0, |shutdown| crate::demo::run(ports, tls, shutdown))
        }
        Some(Command::Certs { out, nodes }) => {
            match crate::tls::write_cluster_certs(&out, &nodes) {
                Ok(files) => {
                    for f in files {
                        let _ = writeln!(std::io::stdout(), "{}", f.display());
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    let _ = writeln!(std::io::stderr(), "caracal certs: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Some(Command::Status { admin }) => {
            let rt = match runtime(1) {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("caracal: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(status::fetch(&admin)) {
                Ok(s) => {
                    let _ = write!(std::io::stdout(), "{}", status::render(&s));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    let _ = writeln!(std::io::stderr(), "caracal status: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Some(Command::DemoBackend { listen, name }) => {
            init_logging(LogFormat::Text, "info");
            block_on_with_signals(0, |shutdown| async move {
                let l = tokio::net::TcpListener::bind(listen).await?;
                tracing::info!(kind = "demo-backend", addr = %l.local_addr()?, "listening");
                crate::demo::serve_backend(l, name, shutdown).await;
                Ok(())
            })
        }
        None => run_node(cli.run),
    }
}

/// Runs `f` on a runtime of `workers` threads (see [`runtime`]) with SIGTERM/SIGINT wired
/// to its shutdown token.
fn block_on_with_signals<F, Fut>(workers: usize, f: F) -> ExitCode
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let rt = match runtime(workers) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("caracal: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let res = rt.block_on(async {
        let shutdown = CancellationToken::new();
        let signals = tokio::spawn(on_signal(shutdown.clone()));
        let res = f(shutdown).await;
        signals.abort();
        res
    });
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("caracal: {e:#}");
            // A duplicate route is a configuration error, like a bad file.
            if let Some(crate::cluster::ClusterError::DuplicateRoute { .. }) = e.downcast_ref() {
                return ExitCode::from(2);
            }
            ExitCode::FAILURE
        }
    }
}

/// `level`: the filter when `RUST_LOG` is not set (`[log] level`). The filter can be
/// replaced while running (a reload, through [`crate::logging`]).
fn init_logging(format: LogFormat, level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    macro_rules! install {
        ($b:expr) => {{
            let b = $b.with_filter_reloading();
            let handle = b.reload_handle();
            b.init();
            crate::logging::install(Box::new(move |d: &str| {
                let f = EnvFilter::try_new(d).map_err(|e| e.to_string())?;
                handle.reload(f).map_err(|e| e.to_string())
            }));
        }};
    }
    match format {
        LogFormat::Json => install!(builder.json()),
        LogFormat::Text => install!(builder.with_ansi(std::io::stderr().is_terminal())),
    }
}

fn run_node(args: NodeArgs) -> ExitCode {
    let cfg = match config::load(&args.config, &args.set) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("caracal: config error: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(args.log_format, &cfg.log.level);
    block_on_with_signals(cfg.node.workers, |shutdown| async move {
        let listeners = crate::node::Listeners::bind(&cfg).await?;
        crate::node::run(cfg, listeners, shutdown).await
    })
}

/// `workers = 1` gets a current-thread runtime: one core, no work-stealing overhead;
/// 0 = one worker per core.
/// A worker that parks returns freed memory to the OS if a swap pass asked since its last
/// park (`memory::on_park`: one atomic load otherwise).
fn runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut b = match workers {
        1 => tokio::runtime::Builder::new_current_thread(),
        0 => tokio::runtime::Builder::new_multi_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
    };
    b.enable_all()
        .on_thread_park(crate::memory::on_park)
        .build()
}

/// SIGTERM or SIGINT starts a graceful shutdown.
async fn on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    shutdown.cancel();
}
