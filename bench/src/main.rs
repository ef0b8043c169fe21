//! `myelin-load`: a load benchmark for Matrix homeservers over the Client-Server API.
//!
//! By default it starts a fresh Myelin (the release `myelin-server` beside it, SQLite in a
//! temporary directory), runs the workloads and stops it. `--postgres URL` does the same on a
//! new PostgreSQL database; `--processes 1,2,3` (with `--postgres`) runs them once per count of
//! Myelin processes sharing one database, taking turns over the processes as a load balancer
//! would, and prints the counts side by side; `--target URL` drives an already-running
//! homeserver instead; `--compare URL` runs Myelin and then the homeserver at URL and prints
//! the ratios.

mod client;
mod stats;
mod target;
mod workloads;

use std::path::PathBuf;

use clap::Parser;
use serde::Serialize;

use crate::client::Client;
use crate::stats::{Latency, ProcessUsage};
use crate::target::Target;
use crate::workloads::{Params, Throughput};

/// Load benchmark for Matrix homeservers.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Run against Myelin on a new database of this PostgreSQL server instead of SQLite.
    #[arg(long)]
    postgres: Option<String>,
    /// How many Myelin processes serve the server from one database (`--postgres` needed
    /// beyond 1); a list (`1,2,3`) runs the workloads once per count.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    processes: Vec<usize>,
    /// Run against this already-running homeserver instead of starting Myelin.
    #[arg(long, conflicts_with = "compare")]
    target: Option<String>,
    /// Also run against this homeserver and print Myelin's ratios to it.
    #[arg(long)]
    compare: Option<String>,
    /// PID of the `--target`/`--compare` server, to report its CPU and memory.
    #[arg(long)]
    target_pid: Option<u32>,
    /// Users registered for the send workload.
    #[arg(long, default_value_t = 20)]
    users: usize,
    /// Concurrent senders (C).
    #[arg(long, default_value_t = 10)]
    concurrency: usize,
    /// Messages in the send workload (M).
    #[arg(long, default_value_t = 2000)]
    messages: usize,
    /// Messages timed in the fan-out workload (K).
    #[arg(long, default_value_t = 100)]
    fanout: usize,
    /// Rooms of the initial-sync user (R).
    #[arg(long, default_value_t = 50)]
    rooms: usize,
    /// Where to write the JSON results.
    #[arg(long, default_value = "bench-results.json")]
    out: PathBuf,
}

/// Everything measured on one homeserver.
#[derive(Debug, Serialize)]
struct Report {
    target: String,
    params: Params,
    send: Throughput,
    fanout: Latency,
    initial_sync: Latency,
    resources: Option<Resources>,
}

/// Server resources over the run.
#[derive(Debug, Serialize)]
struct Resources {
    cpu_ms_per_event: f64,
    peak_rss_mib: f64,
    final_rss_mib: f64,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("myelin-load: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("myelin-load: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let params = Params {
        users: args.users.max(2),
        concurrency: args.concurrency.max(1),
        messages: args.messages,
        fanout: args.fanout,
        rooms: args.rooms,
    };
    let mut reports = Vec::new();
    match &args.target {
        Some(url) => reports.push(measure(Target::external(url, url), params, args.target_pid).await?),
        None => {
            for &processes in &args.processes {
                let myelin = Target::start_myelin(args.postgres.as_deref(), processes).await?;
                reports.push(measure(myelin, params, None).await?);
            }
            if let Some(url) = &args.compare {
                reports.push(measure(Target::external(url, url), params, args.target_pid).await?);
            }
        }
    }
    for report in &reports {
        print_report(report);
    }
    if args.processes.len() > 1 {
        print_scaling(&reports[..args.processes.len()], &args.processes);
    }
    if let [mine, other] = reports.as_slice()
        && args.processes.len() == 1
    {
        print_ratios(mine, other);
    }
    std::fs::write(&args.out, serde_json::to_string_pretty(&reports)?)?;
    println!("\nresults written to {}", args.out.display());
    Ok(())
}

async fn measure(target: Target, params: Params, external_pid: Option<u32>) -> anyhow::Result<Report> {
    let pids = if target.pids.is_empty() { external_pid.into_iter().collect() } else { target.pids.clone() };
    let usage = || ProcessUsage::read_all(&pids);
    let client = Client::round_robin(&target.base_urls)?;
    client.wait_until_up(std::time::Duration::from_secs(60)).await?;
    eprintln!("== {} at {}", target.name, target.base_urls.join(", "));
    let prefix = format!("load{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let users = workloads::register_users(&client, &prefix, params.users).await?;

    let cpu_before = usage();
    let send = workloads::send_throughput(&client, &users, params.concurrency, params.messages).await?;
    let cpu_after = usage();
    eprintln!("   send: {:.0} events/s", send.events_per_second);

    let fanout = workloads::fanout(&client, &users[0], &users[1], params.fanout).await?;
    eprintln!("   fan-out p99: {:.1} ms", fanout.p99_ms);
    let sync_user = client.register(&format!("{prefix}_sync"), "bench-password").await?;
    let initial_sync = workloads::initial_sync(&client, &sync_user, params.rooms, 10).await?;
    eprintln!("   initial sync p50: {:.1} ms", initial_sync.p50_ms);

    let resources = match (cpu_before, cpu_after, usage()) {
        (Some(before), Some(after), Some(end)) if send.events > 0 => Some(Resources {
            cpu_ms_per_event: (after.cpu_seconds - before.cpu_seconds) * 1000.0 / send.events as f64,
            peak_rss_mib: end.peak_rss_mib,
            final_rss_mib: end.rss_mib,
        }),
        _ => None,
    };
    let report = Report { target: target.name.clone(), params, send, fanout, initial_sync, resources };
    target.stop().await?;
    Ok(report)
}

fn print_report(r: &Report) {
    let p = &r.params;
    println!(
        "\n{} — users {}, C={}, M={}, K={}, R={}",
        r.target, p.users, p.concurrency, p.messages, p.fanout, p.rooms
    );
    println!("{:<34} {:>10} {:>10} {:>10} {:>10}", "", "p50 ms", "p90 ms", "p99 ms", "max ms");
    let row = |name: &str, l: &Latency| {
        println!("{name:<34} {:>10.2} {:>10.2} {:>10.2} {:>10.2}", l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms)
    };
    row(&format!("send ({:.0} events/s)", r.send.events_per_second), &r.send.latency);
    row("fan-out (send → receiver sync)", &r.fanout);
    row(&format!("initial sync ({} rooms)", p.rooms), &r.initial_sync);
    match &r.resources {
        Some(res) => println!(
            "server: {:.3} ms CPU per event, peak RSS {:.1} MiB, final RSS {:.1} MiB",
            res.cpu_ms_per_event, res.peak_rss_mib, res.final_rss_mib
        ),
        None => println!("server: resources unknown (pass --target-pid for an external server)"),
    }
}

/// One line per process count: how the workloads scale over processes on one database.
fn print_scaling(reports: &[Report], counts: &[usize]) {
    println!("\nprocesses on one database (requests round-robin over them)");
    println!(
        "{:>9} {:>14} {:>12} {:>14} {:>18} {:>14}",
        "processes", "send events/s", "send p99 ms", "fan-out p99 ms", "initial sync p50", "CPU ms/event"
    );
    for (report, count) in reports.iter().zip(counts) {
        let cpu = report.resources.as_ref().map_or(f64::NAN, |r| r.cpu_ms_per_event);
        println!(
            "{count:>9} {:>14.0} {:>12.2} {:>14.2} {:>18.2} {cpu:>14.3}",
            report.send.events_per_second, report.send.latency.p99_ms, report.fanout.p99_ms, report.initial_sync.p50_ms
        );
    }
}

fn print_ratios(mine: &Report, other: &Report) {
    println!("\n{} compared with {}", mine.target, other.target);
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
    println!("  send throughput       {:>8.1}x", ratio(mine.send.events_per_second, other.send.events_per_second));
    println!("  send latency p99      {:>8.1}x lower", ratio(other.send.latency.p99_ms, mine.send.latency.p99_ms));
    println!("  fan-out p99           {:>8.1}x lower", ratio(other.fanout.p99_ms, mine.fanout.p99_ms));
    println!("  initial sync p50      {:>8.1}x lower", ratio(other.initial_sync.p50_ms, mine.initial_sync.p50_ms));
    if let (Some(a), Some(b)) = (&mine.resources, &other.resources) {
        println!("  CPU per event         {:>8.1}x lower", ratio(b.cpu_ms_per_event, a.cpu_ms_per_event));
        println!("  peak RSS              {:>8.1}x lower", ratio(b.peak_rss_mib, a.peak_rss_mib));
    }
}
