//! `signalbox-cache`: serves the score cache (`serve`), and makes API tokens (`token`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use serde::Deserialize;
use signalbox_policy::signing::{LoadContext, TrustedKeys, load_bundle};
use signalbox_score_cache::auth::{self, Tokens};
use signalbox_score_cache::model::IpKeying;
use signalbox_score_cache::server::{self, App, Settings};
use signalbox_score_cache::store::embedded::EmbeddedStore;
use signalbox_score_cache::store::redis::RedisStore;
use signalbox_score_cache::store::{AnyStore, Store};

#[derive(Parser)]
#[command(name = "signalbox-cache", version, about = "The Signalbox score cache")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API.
    Serve(Box<ServeArgs>),
    /// Print a new random API token and the `sha256` line for the tokens file.
    Token,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7900")]
    listen: SocketAddr,
    /// Data directory of the embedded store (the default store).
    #[arg(long, conflicts_with = "redis", required_unless_present = "redis")]
    data: Option<PathBuf>,
    /// Share state through Redis instead (`redis://host:6379/0`).
    #[arg(long)]
    redis: Option<String>,
    /// Key prefix in Redis.
    #[arg(long, default_value = "sb")]
    redis_prefix: String,
    /// Deadline of one store call, ms (a slow or dead Redis answers 503 within it).
    #[arg(long, default_value_t = 250)]
    store_timeout_ms: u64,
    /// The bundle whose thresholds and `scoring` apply: a signed envelope, or plain JSON with
    /// --allow-unsigned (`signalbox policy build` turns YAML with includes into JSON).
    #[arg(long)]
    bundle: PathBuf,
    /// Trusted public keys for signed bundles, this one and pushed ones (`signalbox policy
    /// keygen` writes them).
    #[arg(long)]
    trusted_keys: Option<PathBuf>,
    /// Accept plain, unsigned bundles (this one, and pushed ones; development only).
    #[arg(long)]
    allow_unsigned: bool,
    /// Days edges' verdict records are kept.
    #[arg(long, default_value_t = 14)]
    log_retention_days: u32,
    /// An edge that has not reported for this long is stale in `GET /v1/fleet`, seconds.
    #[arg(long, default_value_t = 120)]
    fleet_stale_seconds: u64,
    /// The tokens file (see `signalbox_score_cache::auth`).
    #[arg(long)]
    tokens: PathBuf,
    /// Days raw events are kept.
    #[arg(long, default_value_t = 30)]
    retention_days: u32,
    /// Days the log keeps lifted and expired decisions (older cursors get 410).
    #[arg(long, default_value_t = 7)]
    tombstone_days: u32,
    /// An environment variable holding a key: IP subjects are then stored as keyed hashes.
    #[arg(long)]
    ip_hash_key_env: Option<String>,
    /// Requests in flight at once; more are shed with 503.
    #[arg(long, default_value_t = 1024)]
    concurrency: usize,
    /// How often every node re-reads the decision log, ms.
    #[arg(long, default_value_t = 500)]
    follow_ms: u64,
    /// Serve HTTPS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// The origin browsers reach the dashboard at, when a proxy in front terminates TLS or
    /// rewrites `Host` (`https://signalbox.example.com`): dashboard form posts must come from
    /// it, and an https origin makes the session cookie `Secure`.
    #[arg(long)]
    public_origin: Option<String>,
    /// Serve `GET /v1/noop` (the load run's baseline).
    #[arg(long, hide = true)]
    bench_routes: bool,
}

#[derive(Deserialize)]
struct KeysFile {
    keys: Vec<KeyEntry>,
}

#[derive(Deserialize)]
struct KeyEntry {
    kid: String,
    public: String,
}

fn trusted_keys(args: &ServeArgs) -> Result<TrustedKeys> {
    Ok(match &args.trusted_keys {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let file: KeysFile = serde_norway::from_str(&text)
                .with_context(|| format!("{}: a trusted-keys file", path.display()))?;
            TrustedKeys::from_base64(
                file.keys
                    .iter()
                    .map(|k| (k.kid.as_str(), k.public.as_str())),
            )?
        }
        None => TrustedKeys::from_base64([])?,
    })
}

fn load_policy(args: &ServeArgs, keys: &TrustedKeys) -> Result<signalbox_policy::Policy> {
    let bytes = std::fs::read(&args.bundle)
        .with_context(|| format!("reading {}", args.bundle.display()))?;
    let now = server::now_ms() / 1000;
    load_bundle(
        &bytes,
        keys,
        &LoadContext {
            now,
            active_revision: None,
            allow_unsigned: args.allow_unsigned,
        },
    )
    .map_err(|e| anyhow::anyhow!("{}: {e}", args.bundle.display()))
}

async fn serve(args: ServeArgs) -> Result<()> {
    let keys = trusted_keys(&args)?;
    let policy = load_policy(&args, &keys)?;
    let tokens = Tokens::from_file(&args.tokens, |v| std::env::var(v).ok())?;
    let hash_key = match &args.ip_hash_key_env {
        Some(var) => Some(
            std::env::var(var)
                .ok()
                .filter(|k| k.len() >= 16)
                .with_context(|| format!("--ip-hash-key-env: {var} must hold at least 16 bytes"))?
                .into_bytes(),
        ),
        None => None,
    };
    let public_origin = match &args.public_origin {
        Some(raw) => Some(
            server::public_origin_of(raw).map_err(|e| anyhow::anyhow!("--public-origin: {e}"))?,
        ),
        None => None,
    };
    let settings = Settings {
        public_origin,
        tokens,
        ip: IpKeying {
            ipv6_prefix: policy.ipv6_prefix(),
            hash_key,
        },
        retention_days: args.retention_days,
        tombstone_days: args.tombstone_days,
        concurrency: args.concurrency,
        bench_routes: args.bench_routes,
        bundle_keys: keys,
        allow_unsigned_bundles: args.allow_unsigned,
        fleet_stale_seconds: args.fleet_stale_seconds,
        log_retention_days: args.log_retention_days,
        secure_cookies: args.tls_cert.is_some(),
        ..Settings::default()
    };
    let timeout = Duration::from_millis(args.store_timeout_ms);
    let (store, stats) = match (&args.data, &args.redis) {
        (Some(dir), _) => {
            let store = EmbeddedStore::open(dir)?;
            let stats = store.stats();
            (AnyStore::Embedded(store), Some(stats))
        }
        (None, Some(url)) => {
            let store = RedisStore::open(url, &args.redis_prefix, timeout, args.retention_days)?;
            if let Some(warning) = store.check_durability().await {
                tracing::warn!("{warning}");
            }
            (AnyStore::Redis(store), None)
        }
        (None, None) => anyhow::bail!("give --data DIR or --redis URL"),
    };
    let revision = policy.revision();
    let app = App::new(store, policy, settings);
    if let Some(stats) = stats {
        app.metrics.watch_commits(stats);
    }
    if let Err(e) = app.store().ping().await {
        tracing::warn!(error = %e, "the store does not answer yet; serving 503 until it does");
    }
    server::spawn_background(&app, Duration::from_millis(args.follow_ms.max(50)));
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(signalbox_score_cache::tls::server_config(cert, key)?),
        _ => None,
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let local = listener.local_addr()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(listen = %local, scheme, revision, "signalbox-cache serving");
    // Tests and scripts read this line to learn the port.
    println!("listening on {scheme}://{local}");
    // Handlers see each connection's client address (the dashboard's login limiter).
    let router = server::router(app).into_make_service_with_connect_info::<server::PeerAddr>();
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    match tls {
        Some(config) => {
            let listener = signalbox_score_cache::tls::TlsListener::new(listener, config)?;
            axum::serve(listener, router)
                .with_graceful_shutdown(shutdown)
                .await?;
        }
        None => {
            axum::serve(listener, router)
                .with_graceful_shutdown(shutdown)
                .await?;
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Token => {
            let mut bytes = [0u8; 24];
            match getrandom::fill(&mut bytes) {
                Ok(()) => {
                    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
                    println!("token:  {token}");
                    println!("sha256: {}", auth::digest_hex(&token));
                    Ok(())
                }
                Err(e) => Err(anyhow::anyhow!("no randomness: {e}")),
            }
        }
        Command::Serve(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(serve(*args))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("signalbox-cache: {e:#}");
            ExitCode::FAILURE
        }
    }
}
