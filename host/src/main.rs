//! The `aggregate-host` binary: parses the command line and calls the library.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use aggregate_host::client::{Client, ClientError, CommandOptions};
use aggregate_host::config::Config;
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "aggregate-host",
    version,
    about = "Runs event-sourced aggregates shipped as WebAssembly components"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

/// Where a running host is, for the client subcommands.
#[derive(Args)]
struct Remote {
    /// Base URL of the gateway API.
    #[arg(
        long,
        env = "AGGREGATE_GATEWAY_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    gateway: String,
    /// Base URL of the admin API.
    #[arg(
        long,
        env = "AGGREGATE_ADMIN_URL",
        default_value = "http://127.0.0.1:8081"
    )]
    admin: String,
    /// Admin bearer token.
    #[arg(long, env = "AGGREGATE_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Tenant (`x-tenant-id`) of gateway requests.
    #[arg(long, env = "AGGREGATE_TENANT")]
    tenant: Option<String>,
    /// JWT sent as `Authorization: Bearer` on gateway requests (a host with `jwt` configured).
    #[arg(long, env = "AGGREGATE_GATEWAY_TOKEN", hide_env_values = true)]
    gateway_token: Option<String>,
}

impl Remote {
    fn client(self) -> Client {
        Client::new(self.gateway, self.admin)
            .with_token(self.token)
            .with_tenant(self.tenant)
            .with_gateway_token(self.gateway_token)
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the host: gateway and admin APIs, until SIGTERM or Ctrl-C.
    Serve {
        /// YAML configuration file (then `AGGREGATE_*` variables override it).
        #[arg(long, env = "AGGREGATE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Upload a component for an aggregate type (admin API).
    Deploy {
        /// The aggregate type, e.g. `bank-account`.
        aggregate_type: String,
        /// The component (.wasm).
        file: PathBuf,
        #[command(flatten)]
        remote: Remote,
    },
    /// Submit a command. The JSON's `type` field is the command type unless `--command` is given.
    Send {
        /// The aggregate type.
        aggregate_type: String,
        /// The aggregate id (a UUID v7), or `new` for a fresh one.
        aggregate_id: String,
        /// The command, e.g. '{"type": "deposit", "amount": 100}'.
        json: String,
        /// The command type (then the whole JSON is the payload).
        #[arg(long)]
        command: Option<String>,
        /// Idempotency key (`x-command-id`, a UUID).
        #[arg(long)]
        command_id: Option<String>,
        /// `x-correlation-id`.
        #[arg(long)]
        correlation_id: Option<String>,
        /// Only if the aggregate is at this version (`x-expected-version`).
        #[arg(long)]
        expected_version: Option<u64>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Print the cluster as this host sees it: every host, whether it is live, what it serves
    /// and the manifest revision it has applied (cluster mode; admin API).
    Cluster {
        #[command(flatten)]
        remote: Remote,
    },
    /// Tenant placement in cluster mode (admin API): show it, pin or unpin a tenant, drain or
    /// resume the whole host.
    Placement {
        #[command(subcommand)]
        action: PlacementAction,
        #[command(flatten)]
        remote: Remote,
    },
    /// Print an aggregate's state and version, now or as it was after a past version or at a
    /// past time (rebuilt with the component active now, which the answer names).
    State {
        /// The aggregate type.
        aggregate_type: String,
        /// The aggregate id.
        aggregate_id: String,
        /// The state as it was right after this version (1 is the first event).
        #[arg(long, conflicts_with = "at")]
        version: Option<u64>,
        /// The state as it was at this time (RFC 3339, e.g. `2026-11-30T12:00:00Z`).
        #[arg(long)]
        at: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Print an aggregate's events; with `--follow`, print the events of an aggregate, of a
    /// type or (type `*`) of the whole tenant as they are committed, one JSON line
    /// (`{"id", "event"}`) each, until interrupted. A dropped connection is resumed after the
    /// last id printed, so no event is missed or printed twice.
    Events {
        /// The aggregate type (`*`: every type; only with `--follow`).
        aggregate_type: String,
        /// The aggregate id (optional with `--follow`).
        aggregate_id: Option<String>,
        /// Only events after this version (without `--follow`).
        #[arg(long, default_value_t = 0, conflicts_with = "follow")]
        after: u64,
        /// At most this many (without `--follow`).
        #[arg(long, default_value_t = 100, conflicts_with = "follow")]
        limit: usize,
        /// Follow the event stream.
        #[arg(long)]
        follow: bool,
        /// With `--follow`: start after this event id as printed before (`P.i`, or a log
        /// position `P`; `0` replays from the start). Default: only events committed from now.
        #[arg(long, requires = "follow")]
        after_id: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Print the tenant's aggregates of a type whose state matches a CEL filter (e.g.
    /// `state.balance > 50`), one JSON line (`{"aggregate_id", "version", "state",
    /// "last_event_at"}`) each, over every page.
    Query {
        /// The aggregate type.
        aggregate_type: String,
        /// The CEL filter over `state`, `id`, `version` and `last_event_at` (default: all).
        filter: Option<String>,
        /// Aggregates per request (1..1000).
        #[arg(long, default_value_t = 500)]
        page_size: usize,
        /// Stop after this many aggregates.
        #[arg(long)]
        max: Option<usize>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Clear caches: with `--data-dir`, offline (the host stopped), remove the precompiled
    /// artifacts there; else `POST /admin/cache/clear` on a running host (artifacts, and the
    /// tenant logs of storage routes nothing uses).
    Cache {
        /// Only `clear`.
        #[arg(value_parser = ["clear"])]
        action: String,
        /// The data directory of a stopped host.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Print `/ready` of a running host; exit 1 unless it is ready.
    Health {
        #[command(flatten)]
        remote: Remote,
    },
    /// Build an aggregate project (Rust, Go, JavaScript or Python) into a component.
    Build {
        /// The project folder (its language is told by Cargo.toml, go.mod, package.json /
        /// aggregate.js, or app.py).
        #[arg(default_value = ".")]
        project: PathBuf,
        /// Where to write the component (default: `<project>/<folder name>.wasm`).
        #[arg(short, long)]
        out: Option<PathBuf>,
        /// The `guest-sdk` folder (default: `AGGREGATE_SDK_DIR`, else found above the project
        /// or the binary).
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
    /// Create a ready-to-build aggregate project with a test.
    New {
        /// The language: rust, go, js or python.
        #[arg(long)]
        lang: String,
        /// The aggregate type, e.g. `my-counter` (also the folder name).
        name: String,
        /// Where to create it (default: `./<name>`).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The `guest-sdk` folder (default: `AGGREGATE_SDK_DIR`, else found above the binary).
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
    /// Deploy a bank-account component and run a short story through the runtime.
    Demo {
        /// The bank-account component (.wasm).
        #[arg(long)]
        component: PathBuf,
        /// Where the registry keeps blobs, artifacts and the manifest (default: a temp dir).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

/// What `aggregate-host placement` does.
#[derive(Debug, clap::Subcommand)]
enum PlacementAction {
    /// The pins, the hosts that may own tenants, and with `--tenant` that tenant's owner.
    Show {
        /// A tenant whose owner to show.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Pin a tenant to a host (`_` names the single tenant).
    Pin {
        /// The tenant.
        tenant: String,
        /// The host id.
        host_id: String,
    },
    /// Remove a tenant's pin.
    Unpin {
        /// The tenant.
        tenant: String,
    },
    /// Drain the host the admin URL points at: it owns no tenant until `resume`. With
    /// `--tenant`, hand only that tenant over to its next owner.
    Drain {
        /// Release only this tenant (it moves to its next owner until `resume --tenant`).
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Let a drained host own tenants again (with `--tenant`: take that tenant back).
    Resume {
        /// Take back only this tenant.
        #[arg(long)]
        tenant: Option<String>,
    },
}

/// The body of `/admin/drain` and `/admin/resume`: one tenant, or the whole host.
fn drain_body(tenant: &Option<String>) -> serde_json::Value {
    match tenant {
        Some(t) => serde_json::json!({ "tenant_id": t }),
        None => serde_json::json!({ "host": true }),
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            match e.downcast_ref::<ClientError>() {
                Some(ClientError::Problem { problem, .. }) => {
                    eprintln!("error: {e}");
                    eprintln!(
                        "{}",
                        serde_json::to_string_pretty(problem).unwrap_or_default()
                    );
                }
                _ => eprintln!("error: {e:#}"),
            }
            ExitCode::FAILURE
        }
    }
}

fn print(v: &serde_json::Value) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", serde_json::to_string_pretty(v)?)?;
    Ok(())
}

/// Write one compact JSON line to stdout and flush it (for `--follow`, line by line).
fn print_line(v: &serde_json::Value) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{v}")?;
    out.flush()?;
    Ok(())
}

/// Whether following should reconnect after this error: transport errors, a garbled line, and
/// the answers that mean "later" (429, 502, 503, 504). Anything else (a bad id, an unknown type,
/// a refused tenant) would fail again.
fn worth_retrying(e: &ClientError) -> bool {
    match e.status() {
        None => true,
        Some(s) => matches!(s, 429 | 502 | 503 | 504),
    }
}

/// `events --follow`: print each event as it arrives; reconnect after the last id printed (or
/// after where the stream began, when none was printed yet) with a backoff of 0.1 s doubling to
/// 5 s (back to 0.1 s once an event arrives), until interrupted. A stream silent for 60 s (four
/// default heartbeats) counts as dropped.
async fn follow_events(
    client: &Client,
    ty: Option<&str>,
    id: Option<&str>,
    mut after: Option<String>,
) -> anyhow::Result<()> {
    const FIRST_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);
    const IDLE: std::time::Duration = std::time::Duration::from_secs(60);
    let mut pause = FIRST_PAUSE;
    loop {
        match client.event_stream(ty, id, after.as_deref()).await {
            Err(e) if worth_retrying(&e) => eprintln!("events: {e}"),
            Err(e) => return Err(e.into()),
            Ok(mut stream) => loop {
                use aggregate_host::client::StreamItem;
                // The host sends a heartbeat every 15 s by default: a connection silent for four
                // of them is taken as lost (a half-open TCP connection never ends by itself).
                let next = match tokio::time::timeout(IDLE, stream.next()).await {
                    Ok(next) => next,
                    Err(_) => {
                        eprintln!("events: nothing received for {} s", IDLE.as_secs());
                        break;
                    }
                };
                match next {
                    Some(Ok(StreamItem::Ready(ready))) => {
                        if after.is_none() {
                            after = ready["after"].as_str().map(str::to_string);
                        }
                        eprintln!(
                            "events: following after {}",
                            after.as_deref().unwrap_or("?")
                        );
                    }
                    Some(Ok(StreamItem::Event { id, event })) => {
                        print_line(&serde_json::json!({ "id": id, "event": event }))?;
                        after = Some(id);
                        // Progress: a later drop reconnects soon. (A stream that fails before
                        // any event keeps backing off.)
                        pause = FIRST_PAUSE;
                    }
                    Some(Ok(StreamItem::Heartbeat)) => {}
                    Some(Ok(StreamItem::Error(problem))) => {
                        eprintln!("events: the host ended the stream: {problem}");
                        break;
                    }
                    Some(Err(e)) => {
                        eprintln!("events: connection lost: {e}");
                        break;
                    }
                    None => {
                        eprintln!("events: the host closed the stream");
                        break;
                    }
                }
            },
        }
        eprintln!(
            "events: reconnecting in {:.1} s after {}",
            pause.as_secs_f64(),
            after.as_deref().unwrap_or("the log's end")
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(std::time::Duration::from_secs(5));
    }
}

/// `query`: every page, one line per aggregate; per-row evaluation errors are reported on stderr.
async fn query_all(
    client: &Client,
    ty: &str,
    filter: Option<&str>,
    page_size: usize,
    max: Option<usize>,
) -> anyhow::Result<()> {
    let mut token: Option<String> = None;
    let mut printed = 0usize;
    loop {
        let page = client
            .query(ty, filter, Some(page_size), token.as_deref())
            .await?;
        if page["errors"].as_u64().unwrap_or(0) > 0 {
            eprintln!(
                "query: the filter failed on {} aggregates of this page (they are left out): {}",
                page["errors"], page["first_error"]
            );
        }
        for item in page["items"].as_array().into_iter().flatten() {
            if max.is_some_and(|m| printed >= m) {
                return Ok(());
            }
            print_line(item)?;
            printed += 1;
        }
        match page["next_page_token"].as_str() {
            Some(t) => token = Some(t.to_string()),
            None => return Ok(()),
        }
    }
}

/// Every file below `dir` (no links followed).
fn walk(dir: &std::path::Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            out.extend(walk(&entry.path())?);
        } else if kind.is_file() {
            out.push(entry.path());
        }
    }
    Ok(out)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Cmd::Serve { config } => {
            let config = Config::load(config.as_deref(), std::env::vars())?;
            aggregate_host::telemetry::init_tracing(
                config.log_format,
                "info,fjall=warn,lsm_tree=warn",
            );
            let runtime = runtime()?;
            let served = runtime.block_on(aggregate_host::api::serve(config, |bound| {
                // One machine-readable line on stdout (the log goes to stderr): scripts and tests
                // started with port 0 read the addresses from it.
                println!(
                    "listening gateway=http://{} admin=http://{}",
                    bound.gateway, bound.admin
                );
                let _ = std::io::stdout().flush();
            }));
            // A guest call still running past the grace period (limits raised very high) runs on
            // a blocking thread that dropping the runtime would wait for: do not wait for it.
            runtime.shutdown_timeout(std::time::Duration::from_secs(1));
            served
        }
        Cmd::Deploy {
            aggregate_type,
            file,
            remote,
        } => {
            let wasm = std::fs::read(&file)
                .map_err(|e| anyhow::anyhow!("read {}: {e}", file.display()))?;
            print(&runtime()?.block_on(remote.client().deploy(&aggregate_type, wasm))?)
        }
        Cmd::Send {
            aggregate_type,
            aggregate_id,
            json,
            command,
            command_id,
            correlation_id,
            expected_version,
            remote,
        } => {
            let mut payload: serde_json::Value = serde_json::from_str(&json)
                .map_err(|e| anyhow::anyhow!("the command is not JSON: {e}"))?;
            let command = match command {
                Some(c) => c,
                None => match payload.as_object_mut().and_then(|o| o.remove("type")) {
                    Some(serde_json::Value::String(t)) => t,
                    _ => anyhow::bail!(
                        "say which command: a \"type\" field in the JSON, or --command"
                    ),
                },
            };
            let id = if aggregate_id == "new" {
                aggregate_host::types::AggregateId::generate().to_string()
            } else {
                aggregate_id
            };
            let options = CommandOptions {
                command_id,
                correlation_id,
                traceparent: None,
                expected_version,
            };
            print(&runtime()?.block_on(remote.client().send_with(
                &aggregate_type,
                &id,
                &command,
                &payload,
                &options,
            ))?)
        }
        Cmd::State {
            aggregate_type,
            aggregate_id,
            version,
            at,
            remote,
        } => print(&runtime()?.block_on(remote.client().state_at(
            &aggregate_type,
            &aggregate_id,
            version,
            at.as_deref(),
        ))?),
        Cmd::Events {
            aggregate_type,
            aggregate_id,
            after,
            limit,
            follow,
            after_id,
            remote,
        } => {
            if follow {
                let ty = (aggregate_type != "*").then_some(aggregate_type.as_str());
                if ty.is_none() && aggregate_id.is_some() {
                    anyhow::bail!("an aggregate id needs its aggregate type, not `*`");
                }
                return runtime()?.block_on(follow_events(
                    &remote.client(),
                    ty,
                    aggregate_id.as_deref(),
                    after_id,
                ));
            }
            let Some(id) = aggregate_id else {
                anyhow::bail!("say which aggregate (its id), or --follow to follow the stream");
            };
            print(&runtime()?.block_on(remote.client().events(
                &aggregate_type,
                &id,
                after,
                limit,
            ))?)
        }
        Cmd::Query {
            aggregate_type,
            filter,
            page_size,
            max,
            remote,
        } => runtime()?.block_on(query_all(
            &remote.client(),
            &aggregate_type,
            filter.as_deref(),
            page_size,
            max,
        )),
        Cmd::Placement { action, remote } => {
            use reqwest::Method;
            let client = remote.client();
            let (method, path, body) = match &action {
                PlacementAction::Show { tenant: None } => {
                    (Method::GET, "/admin/placement".to_string(), None)
                }
                PlacementAction::Show { tenant: Some(t) } => {
                    (Method::GET, format!("/admin/placement?tenant_id={t}"), None)
                }
                PlacementAction::Pin { tenant, host_id } => (
                    Method::PUT,
                    format!("/admin/placement/pins/{tenant}"),
                    Some(serde_json::json!({ "host_id": host_id })),
                ),
                PlacementAction::Unpin { tenant } => (
                    Method::DELETE,
                    format!("/admin/placement/pins/{tenant}"),
                    None,
                ),
                PlacementAction::Drain { tenant } => (
                    Method::POST,
                    "/admin/drain".to_string(),
                    Some(drain_body(tenant)),
                ),
                PlacementAction::Resume { tenant } => (
                    Method::POST,
                    "/admin/resume".to_string(),
                    Some(drain_body(tenant)),
                ),
            };
            print(&runtime()?.block_on(client.admin(method, &path, body.as_ref()))?)
        }
        Cmd::Cluster { remote } => {
            let client = remote.client();
            print(&runtime()?.block_on(client.admin(
                reqwest::Method::GET,
                "/admin/cluster",
                None,
            ))?)
        }
        Cmd::Health { remote } => print(&runtime()?.block_on(remote.client().ready())?),
        Cmd::Cache {
            action: _,
            data_dir,
            remote,
        } => match data_dir {
            Some(dir) => {
                let artifacts = dir.join("artifacts");
                let mut removed = 0u64;
                if artifacts.exists() {
                    for entry in walk(&artifacts)? {
                        if entry.extension().is_some_and(|e| e == "cwasm") {
                            std::fs::remove_file(&entry)?;
                            removed += 1;
                        }
                    }
                }
                print(&serde_json::json!({ "artifacts_removed": removed }))
            }
            None => print(&runtime()?.block_on(remote.client().admin(
                reqwest::Method::POST,
                "/admin/cache/clear",
                None,
            ))?),
        },
        Cmd::Build { project, out, sdk } => {
            use aggregate_host::guest;
            let sdk = guest::Sdk::locate(sdk.as_deref(), &project)?;
            let out = out.unwrap_or_else(|| {
                let name = std::path::absolute(&project)
                    .ok()
                    .and_then(|p| p.file_name().map(|n| n.to_string_lossy().replace('-', "_")))
                    .unwrap_or_else(|| "aggregate".into());
                project.join(format!("{name}.wasm"))
            });
            let built = guest::build(&sdk, &project, &out)?;
            println!(
                "built {} ({}, {} bytes, {:.1} s)",
                built.path.display(),
                built.language,
                built.bytes,
                built.elapsed.as_secs_f64()
            );
            Ok(())
        }
        Cmd::New {
            lang,
            name,
            dir,
            sdk,
        } => {
            use aggregate_host::guest;
            let lang: guest::Language = lang.parse()?;
            guest::check_name(&name)?;
            let dir = dir.unwrap_or_else(|| PathBuf::from(&name));
            let cwd = std::env::current_dir()?;
            let sdk = guest::Sdk::locate(sdk.as_deref(), &cwd)?;
            let files = guest::scaffold(&sdk, lang, &name, &dir)?;
            println!("created {} ({lang}, {} files)", dir.display(), files.len());
            for f in files {
                println!("  {}", f.display());
            }
            println!(
                "next: aggregate-host build {} && aggregate-host deploy {name} <the .wasm>",
                dir.display()
            );
            Ok(())
        }
        Cmd::Demo {
            component,
            data_dir,
        } => {
            aggregate_host::telemetry::init_tracing(Default::default(), "warn");
            let tmp;
            let dir = match data_dir {
                Some(d) => d,
                None => {
                    tmp = tempfile::tempdir()?;
                    tmp.path().to_path_buf()
                }
            };
            aggregate_host::demo::run(&component, &dir, &mut std::io::stdout().lock())
        }
    }
}
