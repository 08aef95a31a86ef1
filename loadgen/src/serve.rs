//! `loadgen serve`: only the targets (TCP modes and the UDP echo on the
//! same port number), one executor per core, until SIGINT, SIGTERM or
//! --duration; then the counters on stdout (and as JSON).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::cli::ServeArgs;
use crate::cores::default_cores;
use crate::error::LoadgenError;
use crate::net::resolve;
use crate::output::write_json;
use crate::runner::{check_memlock, executor};
use crate::target::{bind_targets, PauseHook, TargetCore, TargetHooks, TargetStats};

#[derive(Debug, Serialize)]
struct ServeReport {
    schema: &'static str,
    listen: String,
    cores: Vec<usize>,
    seconds: f64,
    counters: TargetStats,
}

pub fn run(args: &ServeArgs) -> Result<(), LoadgenError> {
    if args.glommio_io {
        crate::ring::disable();
    }
    check_memlock()?;
    let _ = coresocks_io::sys::raise_nofile_limit();
    let allowed = coresocks_io::sys::allowed_cpus()
        .map_err(|e| LoadgenError::Cores(format!("cannot read the CPU affinity: {e}")))?;
    let cpus = match &args.cores {
        Some(spec) => spec.select(&allowed).map_err(LoadgenError::Cores)?,
        None => default_cores(&allowed),
    };
    let wanted = resolve("listen address", &args.listen)?;
    let sockets = bind_targets(wanted, cpus.len()).map_err(|source| LoadgenError::Listen {
        addr: wanted.to_string(),
        source,
    })?;
    let addr = sockets.addr;
    let hooks = TargetHooks {
        pause: match (args.pause_after, args.pause) {
            (Some(after_reads), Some(pause)) => Some(PauseHook { after_reads, pause }),
            _ => None,
        },
        udp_drop_every: args.udp_drop_every,
    };

    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone()).map_err(LoadgenError::Signals)?;
    }
    let running = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut handles = Vec::new();
    let mut first_error = None;
    for ((&cpu, fd), udp) in cpus.iter().zip(sockets.tcp).zip(sockets.udp) {
        let (stop_flag, running) = (stop.clone(), running.clone());
        let spawned = executor(cpu, &format!("loadgen-serve-{cpu}")).spawn(move || {
            crate::ring::on_core(async move {
                let target = TargetCore::start(fd, Some(udp), hooks);
                running.fetch_add(1, Ordering::AcqRel);
                while !stop_flag.load(Ordering::Acquire) {
                    coresocks_io::events::sleep(Duration::from_millis(20)).await;
                }
                target.finish()
            })
        });
        match spawned {
            Ok(h) => handles.push(h),
            Err(e) => {
                first_error = Some(LoadgenError::CoreStart {
                    cpu,
                    message: e.to_string(),
                });
                stop.store(true, Ordering::Release);
                break;
            }
        }
    }
    if first_error.is_none() {
        while running.load(Ordering::Acquire) < cpus.len() && !stop.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(1));
        }
        let ids: Vec<String> = cpus.iter().map(|c| c.to_string()).collect();
        eprintln!(
            "loadgen serve: ready on {addr} (CPUs {}); TCP modes H E S R D and a UDP echo on this port; SIGINT or SIGTERM stops it",
            ids.join(",")
        );
        let deadline = args.duration.map(|d| started + d);
        while !stop.load(Ordering::Acquire) {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                stop.store(true, Ordering::Release);
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let mut counters = TargetStats::default();
    for h in handles {
        match h.join() {
            Ok(stats) => counters.merge(&stats),
            Err(e) => {
                first_error.get_or_insert(LoadgenError::Executor(e.to_string()));
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    let report = ServeReport {
        schema: "loadgen-serve-v1",
        listen: addr.to_string(),
        cores: cpus,
        seconds: started.elapsed().as_secs_f64(),
        counters,
    };
    print_counters(&report);
    if let Some(path) = &args.json {
        write_json(&report, path)?;
    }
    Ok(())
}

fn print_counters(r: &ServeReport) {
    let c = &r.counters;
    println!("served {:.1} s on {}", r.seconds, r.listen);
    let rows = [
        ("accepted", c.accepted),
        ("hello connections", c.hello_connections),
        ("echo connections", c.echo_connections),
        ("sink connections", c.sink_connections),
        ("source connections", c.source_connections),
        ("duplex connections", c.duplex_connections),
        ("other connections", c.other_connections),
        ("echo reads", c.echo_reads),
        ("echo bytes", c.echo_bytes),
        ("echo ended with FIN", c.echo_ended_with_fin),
        ("bytes received", c.bytes_received),
        ("bytes sent", c.bytes_sent),
        ("udp datagrams", c.udp_datagrams),
        ("udp bytes", c.udp_bytes),
        ("udp dropped (hook)", c.udp_dropped_on_purpose),
        ("udp send failures", c.udp_send_failures),
    ];
    for (k, v) in rows {
        println!("{k:18}  {v}");
    }
}
