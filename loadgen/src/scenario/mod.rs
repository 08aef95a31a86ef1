//! The scenarios, and what they share: turning options into a runner
//! [`Plan`] and a run's output into a [`Report`].

pub mod cps;
pub mod idle;
pub mod latency;
pub mod throughput;
pub mod udp;

use std::net::SocketAddr;

use coresocks_client::gss::ProtectionLevel;
use coresocks_client::{Credentials, GssapiOptions};

use crate::cli::{AuthArgs, CompareScenario, GssLevel, PathArgs, RunArgs};
use crate::cores::default_cores;
use crate::error::{FailureCounts, LoadgenError};
use crate::net::resolve;
use crate::procstat::{self, LoadgenProcess, ProxyProcess, SystemCost};
use crate::result::{self, Errors, Machine, PathInfo, Report, ScenarioResult, RESULT_SCHEMA};
use crate::runner::{LiveKind, Plan, RunOutput, Sampling, Targets};

/// Which path one run measures.
#[derive(Debug, Clone)]
pub struct PathChoice {
    /// "direct", or a name for the proxy.
    pub name: String,
    pub proxy: Option<SocketAddr>,
    /// The protocol spoken to the proxy (its address's scheme).
    pub protocol: crate::net::ProxyProtocol,
    pub creds: Option<Credentials>,
    /// GSSAPI instead of RFC 1929 (`--gssapi`).
    pub gssapi: Option<GssapiOptions>,
    /// The proxy's process to sample (compare's --proxy-pid NAME=PID);
    /// a single run takes --proxy-pid from its run options instead.
    pub proxy_pid: Option<u32>,
}

impl PathChoice {
    pub fn direct() -> PathChoice {
        PathChoice {
            name: "direct".into(),
            proxy: None,
            protocol: crate::net::ProxyProtocol::Socks5,
            creds: None,
            gssapi: None,
            proxy_pid: None,
        }
    }

    pub fn proxy(name: &str, addr: &str, auth: &AuthArgs) -> Result<PathChoice, LoadgenError> {
        let (protocol, addr) =
            crate::net::ProxyProtocol::split(addr).map_err(LoadgenError::Usage)?;
        let gssapi = gssapi_options(addr, auth);
        if gssapi.is_some() && protocol != crate::net::ProxyProtocol::Socks5 {
            return Err(LoadgenError::Usage(format!(
                "--gssapi is SOCKS5's (RFC 1961), not {}'s",
                protocol.as_str()
            )));
        }
        Ok(PathChoice {
            name: name.to_owned(),
            proxy: Some(resolve("proxy", addr)?),
            protocol,
            creds: credentials(auth),
            gssapi,
            proxy_pid: None,
        })
    }

    /// Refuses GSSAPI protection that wraps data, for a scenario that
    /// speaks to its target in the clear (all but throughput).
    pub fn without_protection(self, scenario: &str) -> Result<PathChoice, LoadgenError> {
        match &self.gssapi {
            Some(g) if g.level.wraps() => Err(LoadgenError::Setup(format!(
                "{scenario} does not relay GSSAPI-protected data: use --gssapi clear, or the throughput scenario"
            ))),
            _ => Ok(self),
        }
    }

    pub fn from_args(args: &PathArgs) -> Result<PathChoice, LoadgenError> {
        match &args.proxy {
            Some(addr) => PathChoice::proxy(addr, addr, &args.auth),
            None => Ok(PathChoice::direct()),
        }
    }
}

/// `--gssapi`: the principal `SERVICE/HOST` to ask a ticket for, and the
/// level. HOST is the proxy's address as the user wrote it.
fn gssapi_options(addr: &str, auth: &AuthArgs) -> Option<GssapiOptions> {
    let level = match auth.gssapi? {
        GssLevel::Clear => ProtectionLevel::Clear,
        GssLevel::Integrity => ProtectionLevel::Integrity,
        GssLevel::Confidentiality => ProtectionLevel::Confidentiality,
    };
    let host = auth.gssapi_host.clone().unwrap_or_else(|| {
        addr.rsplit_once(':')
            .map_or(addr, |(h, _)| h)
            .trim_matches(['[', ']'])
            .to_owned()
    });
    Some(GssapiOptions {
        service: auth.gssapi_service.clone(),
        level,
        ..GssapiOptions::new(&host)
    })
}

fn credentials(auth: &AuthArgs) -> Option<Credentials> {
    match (&auth.user, &auth.password) {
        (Some(u), Some(p)) => Some(Credentials {
            username: u.clone(),
            password: p.clone(),
        }),
        _ => None,
    }
}

/// Runs a scenario given as `compare` holds it.
pub fn run(scenario: &CompareScenario, path: &PathChoice) -> Result<Report, LoadgenError> {
    match scenario {
        CompareScenario::Throughput(a) => throughput::run(path, a),
        CompareScenario::Cps(a) => cps::run(path, a),
        CompareScenario::Latency(a) => latency::run(path, a),
        CompareScenario::Udp(a) => udp::run(path, a),
        CompareScenario::Idle(a) => idle::run(path, a),
    }
}

/// A resolved plan, and what the report needs to describe it.
pub struct RunSetup {
    pub plan: Plan,
    path: PathChoice,
    run: RunArgs,
}

impl RunSetup {
    pub fn new(run: &RunArgs, path: &PathChoice, live: LiveKind) -> Result<RunSetup, LoadgenError> {
        let allowed = coresocks_io::sys::allowed_cpus()
            .map_err(|e| LoadgenError::Cores(format!("cannot read the CPU affinity: {e}")))?;
        let load_cpus = match &run.cores {
            Some(spec) => spec.select(&allowed).map_err(LoadgenError::Cores)?,
            None => default_cores(&allowed),
        };
        if load_cpus.is_empty() {
            return Err(LoadgenError::Cores("no CPU to run on".into()));
        }
        let targets = match (&run.target, &run.target_cores) {
            (Some(addr), _) => Targets::External(resolve("target", addr)?),
            (None, Some(spec)) => {
                Targets::Internal(spec.select(&allowed).map_err(LoadgenError::Cores)?)
            }
            (None, None) => Targets::Internal(load_cpus.clone()),
        };
        if let Targets::Internal(cpus) = &targets {
            if cpus.is_empty() {
                return Err(LoadgenError::Cores("no CPU for the targets".into()));
            }
        }
        if run.glommio_io {
            crate::ring::disable();
        }
        let proxy_pid = path.proxy_pid.or(run.proxy_pid);
        if let Some(pid) = proxy_pid {
            procstat::check(pid)?;
        }
        Ok(RunSetup {
            plan: Plan {
                load_cpus,
                targets,
                proxy: path.proxy,
                creds: path.creds.clone(),
                gssapi: path.gssapi.clone(),
                protocol: path.protocol,
                warmup: run.warmup,
                duration: run.duration,
                timeout: run.timeout,
                live,
                proxy_pid,
                sampling: Sampling::Window,
                udp_check: false,
                progress: !run.quiet,
            },
            path: path.clone(),
            run: run.clone(),
        })
    }

    /// Builds the report common to every scenario around its `result`.
    pub fn report<R>(
        &self,
        scenario: &'static str,
        scenario_params: serde_json::Value,
        out: RunOutput<R>,
        result: ScenarioResult,
        failures: FailureCounts,
        notes: Vec<String>,
    ) -> Report {
        let mut parameters = serde_json::json!({
            "cores": self.plan.load_cpus,
            "target_cores": out.target_cpus,
            "warmup_s": self.plan.warmup.as_secs_f64(),
            "duration_s": self.run.duration.as_secs_f64(),
            "timeout_s": self.run.timeout.as_secs_f64(),
            "io": if crate::ring::enabled() { "event-ring" } else { "glommio" },
        });
        if let (Some(all), serde_json::Value::Object(extra)) =
            (parameters.as_object_mut(), scenario_params)
        {
            all.extend(extra);
        }
        let mut notes = notes;
        let proxy_process = match (self.plan.proxy_pid, &out.proxy_samples) {
            (Some(pid), Some(Ok((a, b)))) => {
                let sampled = match self.plan.sampling {
                    Sampling::Window => "window",
                    Sampling::Tunnels { .. } => "tunnels",
                };
                Some(ProxyProcess::between(pid, sampled, a, b))
            }
            (_, Some(Err(e))) => {
                notes.push(e.clone());
                None
            }
            _ => None,
        };
        let (series_unit, series) = result::series(self.plan.live, &out.samples);
        let (loadgen_process, system) = match &out.window_samples {
            Some([(own_a, sys_a), (own_b, sys_b)]) => (
                Some(LoadgenProcess::between(own_a, own_b)),
                Some(SystemCost::between(sys_a, sys_b)),
            ),
            None => (None, None),
        };
        Report {
            schema: RESULT_SCHEMA,
            loadgen_version: env!("CARGO_PKG_VERSION"),
            scenario,
            started_unix_s: out.started_unix_s,
            path: PathInfo {
                name: self.path.name.clone(),
                mode: if self.path.proxy.is_some() {
                    "proxy"
                } else {
                    "direct"
                },
                proxy: self.path.proxy.map(|p| p.to_string()),
                auth: self.path.creds.is_some() || self.path.gssapi.is_some(),
                target: out.target_addr.to_string(),
                target_internal: matches!(self.plan.targets, Targets::Internal(_)),
            },
            parameters,
            machine: Machine::current(),
            result,
            errors: Errors {
                total: failures.total(),
                by_cause: failures.by_name(),
            },
            series_unit,
            series,
            target: out.target_stats,
            proxy_process,
            loadgen_process,
            system,
            notes,
            latencies: Vec::new(),
        }
    }
}
