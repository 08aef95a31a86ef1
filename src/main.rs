use std::process::ExitCode;

use clap::Parser;
use coresocks::config::{Cli, Config, Settings, Tool};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.tool {
        Some(Tool::HashPassword) => return hash_password(),
        Some(Tool::CheckConfig { file }) => return check_config(file),
        Some(Tool::Man) => return man_page(),
        None => {}
    }
    // SIGHUP reads the same file again under the same flags.
    let (file, flags) = (cli.config.clone(), cli.settings.clone());
    let config = match Config::load(cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("coresocks: {e}");
            return ExitCode::from(2);
        }
    };
    let (_guards, log) = match coresocks::logging::init(&config.log_level, &config.access_log) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("coresocks: cannot open the access log: {e}");
            return ExitCode::from(2);
        }
    };
    let reloader = coresocks::Reloader {
        load: Box::new(move || {
            let from_file = match &file {
                Some(path) => Settings::from_file(path).map_err(|e| e.to_string())?,
                None => Settings::default(),
            };
            Config::from_settings(flags.clone().over(from_file)).map_err(|e| e.to_string())
        }),
        log: Some(log),
    };
    if let Some(users) = &config.users {
        for w in &users.warnings {
            tracing::warn!("{w}");
        }
    }
    let open_listener = config.listen.iter().find(|a| !a.ip().is_loopback());
    if let (Some(addr), false, false) = (
        open_listener,
        config.users.is_some() || config.gssapi.is_some(),
        config.policy.restricts_clients(),
    ) {
        tracing::warn!(
            "listening on {addr} with neither --users, --gssapi-keytab nor a rule on client addresses: anyone who can reach it may use this proxy"
        );
    }
    if let Some(g) = &config.gssapi {
        let principal = if g.principal.is_empty() {
            "any principal in the keytab"
        } else {
            &g.principal
        };
        tracing::info!(
            "GSSAPI: accepting {principal}, at least {} protection",
            g.minimum.as_str()
        );
    }
    tracing::info!(
        "egress policy: {} rule(s), then private destinations denied (open them with --allow)",
        config.policy.rules().len()
    );
    match coresocks::run(config, reloader) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Flush the asynchronous log writer before the last word.
            drop(_guards);
            eprintln!("coresocks: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `coresocks man`: the man page, from the same clap definitions as
/// `--help`, so the two cannot disagree.
fn man_page() -> ExitCode {
    use clap::CommandFactory;
    let page = clap_mangen::Man::new(Cli::command());
    let mut out = std::io::stdout().lock();
    match page.render(&mut out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("coresocks: cannot write the man page: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `coresocks check-config FILE`: the file (and what it names) validated
/// as a start would, nothing started.
fn check_config(file: &std::path::Path) -> ExitCode {
    let checked = Settings::from_file(file).and_then(Config::from_settings);
    match checked {
        Ok(c) => {
            // The kernel's side of the file: whether it has the congestion
            // controls named.
            if let Err(e) = c.sockets.check_congestion() {
                eprintln!("coresocks: {e}");
                return ExitCode::from(2);
            }
            // Not an error: the proxy runs, relaying in user space.
            if c.relay == coresocks::config::RelayMode::Sockmap {
                if let Err(e) = coresocks::probe_sockmap() {
                    eprintln!(
                        "coresocks: note: relay = \"sockmap\" is not available here ({e}); tunnels would run auto. It needs Linux with CONFIG_BPF_STREAM_PARSER and CAP_BPF + CAP_NET_ADMIN (or root)"
                    );
                }
            }
            println!(
                "{}: ok ({} listener(s), {} rule(s), {} user(s){})",
                file.display(),
                c.listen.len(),
                c.policy.rules().len(),
                c.users.as_ref().map_or(0, |u| u.len()),
                if c.gssapi.is_some() { ", GSSAPI" } else { "" }
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("coresocks: {e}");
            ExitCode::from(2)
        }
    }
}

/// `coresocks hash-password`: one line from stdin (not echoed on a
/// terminal) to an Argon2id PHC string on stdout.
fn hash_password() -> ExitCode {
    let password = match coresocks_io::sys::read_password_line() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("coresocks: cannot read the password from standard input: {e}");
            return ExitCode::from(2);
        }
    };
    if password.is_empty() || password.len() > 255 {
        eprintln!("coresocks: the password must be 1 to 255 bytes (RFC 1929)");
        return ExitCode::from(2);
    }
    match coresocks::config::hash_password(password.as_bytes()) {
        Ok(hash) => {
            println!("{hash}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("coresocks: cannot hash the password: {e}");
            ExitCode::FAILURE
        }
    }
}
