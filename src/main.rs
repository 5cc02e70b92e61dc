//! The command line: flags, configuration, logging, signals. Everything else is the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use natsgate::config::{Config, LogFormat};
use natsgate::fdlimit::{self, Budget};
use natsgate::Gateway;

/// mimalloc (see Cargo.toml): less memory per idle connection, less CPU per connection set up.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A NATS-aware proxy: TLS termination and the authorization window in front of nats-server.
#[derive(Parser, Debug)]
#[command(name = "natsgate", version, about)]
struct Cli {
    /// The configuration file.
    #[arg(long, short = 'c', default_value = "proxy.toml")]
    config: PathBuf,
    /// Validate the configuration, print the effective settings and exit (0: valid).
    #[arg(long)]
    check_config: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("natsgate: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    // As Go programs do (nats-server among them): use the whole hard limit, then share it out.
    let nofile = fdlimit::raise_nofile();
    let budget = Budget::for_limit(nofile.after);
    if cli.check_config {
        return check_config(config, &nofile, &budget);
    }
    init_logging(&config);
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    let (limit, clients, admin) = (budget.limit, budget.clients, budget.admin_connections);
    if nofile.error.is_some() {
        tracing::warn!(
            limit,
            clients,
            admin_connections = admin,
            "{}",
            nofile.describe()
        );
    } else {
        tracing::info!(
            limit,
            clients,
            admin_connections = admin,
            "{}",
            nofile.describe()
        );
    }
    if let Some(w) = budget.check(config.listener.max_connections) {
        tracing::warn!("{w}");
    }
    fdlimit::install(budget);
    tracing::info!("{}", config.upstream_timer_note());
    // One event loop per thread, each with its own client socket (see `listen`): the main
    // thread's also runs the admin endpoints and the background tasks.
    let runtime = match event_loop() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("natsgate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(run(config));
    drop(runtime);
    natsgate::logout::flush();
    code
}

/// Validates everything `natsgate` would load at start-up and prints the effective settings:
/// the configuration itself, serialised (so this list cannot drift from the schema), headed by
/// the resolved authorization window; warnings and the upstream-timer note follow as comments,
/// so the output is itself a valid `proxy.toml`.
fn check_config(config: Config, nofile: &fdlimit::Raise, budget: &Budget) -> ExitCode {
    let effective = match toml::to_string(&config) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("natsgate: cannot print the configuration: {e}");
            return ExitCode::from(2);
        }
    };
    let window = format!(
        "authorization.timeout = {}  # {}",
        config.auth_timeout.as_secs_f64(),
        config.auth_timeout_origin
    );
    let warnings = config.warnings.clone();
    let note = config.upstream_timer_note();
    let descriptors = budget.check(config.listener.max_connections);
    // Certificates, keys and the seed are part of the configuration: load them too.
    let notes = match Gateway::new(config) {
        Ok(g) => g.notes().to_vec(),
        Err(e) => {
            eprintln!("natsgate: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    println!(
        "{window}
"
    );
    print!("{effective}");
    println!();
    for w in warnings {
        println!("# warning: {w}");
    }
    println!(
        "# {}: holds {} clients and {} admin connections",
        nofile.describe(),
        budget.clients,
        budget.admin_connections
    );
    if let Some(w) = descriptors {
        println!("# warning: {w}");
    }
    for n in notes {
        println!("# {n}");
    }
    println!("# {note}");
    println!("# configuration OK");
    ExitCode::SUCCESS
}

/// Logs go to stdout. Colour only when stdout is a terminal (and `NO_COLOR` is unset): a
/// file, a pipe or a container runtime's log gets plain text.
fn init_logging(config: &Config) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("NATSGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.level));
    let colour = std::io::stdout().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_writer(natsgate::logout::Batched)
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_target(false);
    match config.log.format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text if colour => builder.init(),
        LogFormat::Text => builder.fmt_fields(plain_fields()).init(),
    }
}

/// The fields of a plain-text line exactly as the default formatter writes them without
/// colour (`key=value`, strings quoted, the message bare), without its styling machinery,
/// which cost a third of each close line's formatting even with colour off.
fn plain_fields() -> impl for<'w> tracing_subscriber::fmt::FormatFields<'w> + 'static {
    use tracing_subscriber::field::MakeExt;
    tracing_subscriber::fmt::format::debug_fn(|w, field, value| match field.name() {
        "message" => write!(w, "{value:?}"),
        name => write!(w, "{name}={value:?}"),
    })
    .delimited(" ")
}

async fn run(config: Config) -> ExitCode {
    let bind = config.listener.bind;
    let workers = config.listener.worker_count();
    let admin_bind = config.admin.bind;
    let mut gateway = match Gateway::new(config) {
        Ok(g) => g,
        Err(e) => {
            tracing::error!("cannot start: {e}");
            return ExitCode::from(2);
        }
    };
    let (listener, more) = match listen(bind, workers) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("cannot listen on {bind}: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = gateway.bind_websocket().await {
        tracing::error!("cannot listen for WebSocket clients: {e}");
        return ExitCode::FAILURE;
    }
    let admin = match tokio::net::TcpListener::bind(admin_bind).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("cannot listen on {admin_bind} (admin): {e}");
            return ExitCode::FAILURE;
        }
    };
    for n in gateway.notes() {
        tracing::info!("{n}");
    }
    tracing::info!(%bind, admin = %admin_bind, workers, version = env!("CARGO_PKG_VERSION"), "natsgate listening");
    let handle = gateway.handle();
    tokio::spawn(reload_on_sighup(handle.clone()));
    let (threads, drained): (Vec<_>, Vec<_>) = more
        .into_iter()
        .enumerate()
        .filter_map(|(i, l)| worker(i + 1, handle.clone(), l))
        .unzip();
    let others = async move {
        for done in drained {
            let _ = done.await;
        }
    };
    gateway
        .run_with(listener, Some(admin), shutdown_signal(), others)
        .await;
    // Also when `run` ended early: the workers stop accepting and drain.
    handle.shutdown();
    for t in threads {
        let _ = t.join();
    }
    tracing::info!("natsgate stopped");
    ExitCode::SUCCESS
}

/// One thread's event loop: a current-thread runtime with I/O and timers, which writes its
/// log lines before it waits (see `natsgate::logout`).
fn event_loop() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .on_thread_park(natsgate::logout::flush)
        .build()
}

/// A client-serving thread with its own current-thread runtime: every connection it accepts
/// lives on it from accept to close. The receiver completes when it has drained (or failed).
fn worker(
    i: usize,
    handle: natsgate::Handle,
    listener: std::net::TcpListener,
) -> Option<(
    std::thread::JoinHandle<()>,
    tokio::sync::oneshot::Receiver<()>,
)> {
    let (done, drained) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name(format!("natsgate-w{i}"))
        .spawn(move || {
            let runtime = match event_loop() {
                Ok(r) => r,
                Err(e) => return tracing::error!(worker = i, "cannot start a worker: {e}"),
            };
            runtime.block_on(async move {
                match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => handle.serve_clients(l).await,
                    Err(e) => tracing::error!(worker = i, "cannot start a worker: {e}"),
                }
            });
            drop(runtime);
            natsgate::logout::flush();
            let _ = done.send(());
        });
    spawned
        .map_err(|e| tracing::error!(worker = i, "cannot start a worker thread: {e}"))
        .ok()
        .map(|t| (t, drained))
}

/// The client listeners, one per worker, with nats-server's backlog (4096) rather than
/// tokio's 1024, so a connect storm queues in the kernel instead of costing clients a 1 s SYN
/// retransmit. With more than one worker they share the address with `SO_REUSEPORT`; as that
/// would also let a second natsgate started by the same user share it silently, the address
/// is first bound once without it, which fails if anything listens there already.
fn listen(
    bind: std::net::SocketAddr,
    workers: usize,
) -> std::io::Result<(tokio::net::TcpListener, Vec<std::net::TcpListener>)> {
    let socket = |reuseport: bool| -> std::io::Result<tokio::net::TcpSocket> {
        let s = if bind.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        s.set_reuseaddr(true)?;
        if reuseport {
            s.set_reuseport(true)?;
        }
        Ok(s)
    };
    if workers <= 1 {
        let s = socket(false)?;
        s.bind(bind)?;
        return Ok((s.listen(4096)?, Vec::new()));
    }
    if bind.port() != 0 {
        socket(false)?.bind(bind)?;
    }
    let first = socket(true)?;
    first.bind(bind)?;
    let first = first.listen(4096)?;
    let addr = first.local_addr()?;
    let more = (1..workers)
        .map(|_| {
            let s = socket(true)?;
            s.bind(addr)?;
            s.listen(4096)?.into_std()
        })
        .collect::<std::io::Result<Vec<_>>>()?;
    Ok((first, more))
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install SIGTERM/SIGINT handlers");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}

async fn reload_on_sighup(handle: natsgate::Handle) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::error!("cannot install the SIGHUP handler; reload is unavailable");
        return;
    };
    while hup.recv().await.is_some() {
        match handle.reload() {
            Ok(notes) => {
                tracing::info!("configuration reloaded");
                for n in notes {
                    tracing::warn!("{n}");
                }
            }
            Err(e) => tracing::error!("configuration reload failed, keeping the running one: {e}"),
        }
    }
}
