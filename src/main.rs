//! The `blast` command: parses arguments, runs a subcommand and maps the result to a documented
//! exit code (see `cli::exit`). Errors are printed with their whole cause chain.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = blast::cli::Args::parse();
    match blast::cli::run(args) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("blast: error: {err:#}");
            ExitCode::from(blast::cli::exit_code_for(&err))
        }
    }
}
