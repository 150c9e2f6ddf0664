//! The `blast` command: parses arguments, runs a subcommand and maps the result to a documented
//! exit code (see `cli::exit`). Errors are printed with their whole cause chain (`{:#}`), each
//! cause once: a library error that prints its cause in its message keeps it in a field named
//! `cause`, not as its `source()` (`tests/error_texts.rs` holds every `#[error]` to it).

use std::process::ExitCode;

use clap::Parser;

/// mimalloc instead of glibc malloc: messages are built on the render threads and freed on the
/// tokio workers, and glibc serialises such cross-thread frees on the arena lock (measured with
/// `perf` on `scripts/bench-render`: ~600k futex calls per 1.2M messages, a fifth of the CPU in
/// malloc/free). mimalloc frees across threads without a lock.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // 2 MiB pages for mimalloc's memory: the dedupe set (8 bytes per distinct address, tens
    // of MB) is probed at random once per row, and with 4 KiB pages nearly every probe also
    // misses the TLB. Measured on scripts/bench-render: about 4 % less CPU with dedupe on.
    // SAFETY: sets a mimalloc option; valid at any time, affects later OS allocations only.
    unsafe {
        libmimalloc_sys::mi_option_set_enabled(libmimalloc_sys::mi_option_large_os_pages, true)
    };
    let args = blast::cli::Args::parse();
    match blast::cli::run(args) {
        Ok(code) => code,
        Err(err) => {
            // Errors quote relay replies, list values and file contents.
            let text = format!("{err:#}");
            eprintln!("blast: error: {}", blast::terminal::printable_lines(&text));
            ExitCode::from(blast::cli::exit_code_for(&err))
        }
    }
}
