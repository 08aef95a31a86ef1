use std::process::ExitCode;

use clap::Parser;
use coresocks::config::{Cli, Config};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("coresocks: {e}");
            return ExitCode::from(2);
        }
    };
    let _guards = match coresocks::logging::init(&config.log_level, &config.access_log) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("coresocks: cannot open the access log: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(users) = &config.users {
        for w in &users.warnings {
            tracing::warn!("{w}");
        }
    }
    match coresocks::runtime::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Flush the asynchronous log writer before the last word.
            drop(_guards);
            eprintln!("coresocks: {e}");
            ExitCode::FAILURE
        }
    }
}
