//! loadgen: the load generator of coresocks. See README.md.

mod cli;
mod compare;
mod cores;
mod error;
mod net;
mod output;
mod procstat;
mod result;
mod ring;
mod runner;
mod scenario;
mod serve;
mod stats;
mod stream;
mod target;
mod wire;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command, OutputArgs};
use crate::error::LoadgenError;
use crate::result::Report;
use crate::scenario::PathChoice;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), LoadgenError> {
    match cli.command {
        Command::Throughput { path, args, out } => {
            let path = PathChoice::from_args(&path)?;
            finish(scenario::throughput::run(&path, &args)?, &out)
        }
        Command::Cps { path, args, out } => {
            let path = PathChoice::from_args(&path)?.without_protection("cps")?;
            finish(scenario::cps::run(&path, &args)?, &out)
        }
        Command::Latency { path, args, out } => {
            let path = PathChoice::from_args(&path)?.without_protection("latency")?;
            finish(scenario::latency::run(&path, &args)?, &out)
        }
        Command::Udp { path, args, out } => {
            let path = PathChoice::from_args(&path)?.without_protection("udp")?;
            finish(scenario::udp::run(&path, &args)?, &out)
        }
        Command::Idle { path, args, out } => {
            let path = PathChoice::from_args(&path)?.without_protection("idle")?;
            finish(scenario::idle::run(&path, &args)?, &out)
        }
        Command::Serve(args) => serve::run(&args),
        Command::Compare(args) => compare::run(&args),
        Command::Diff(args) => output::diff::run(&args),
        Command::Table(args) => output::markdown::run(&args.files),
    }
}

fn finish(report: Report, out: &OutputArgs) -> Result<(), LoadgenError> {
    print!("{}", output::table::table(&report));
    output::save_run(&report, out)
}
