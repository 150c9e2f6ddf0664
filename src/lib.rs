//! blast: a high-volume bulk-mail campaign sender.
//!
//! Data flows one way: `campaign` (validated config) + `send::source` (streaming CSV) →
//! `send::render` (templates, MIME, DKIM) → `send::prevalidate` (DNS) → `send::dispatch`
//! (retry heap, fallback, rates) → `send::node` (SMTP connections via `smtp`) →
//! `send::outcomes` (the one owner of outcomes) → `journal` / delivery log / suppression list /
//! progress. `blast sink`: `smtp::receiver` → `bounce` (classify, token check, suppression).
//! `report` shows people what happened; `cli` is the only place that knows clap and exit codes.
//!
//! One module or folder per concept; dependencies point one way (layers, leaves first):
//! address, clock, generate, private, shutdown, smtp, terminal, verp → dkim, outcome → campaign → dns → journal →
//! bounce → send → report, fuzzing (the fuzz targets' checks, imported by nothing) → cli.
//! `tests/module_graph.rs` fails on a cycle or an upward import.

pub mod address;
pub mod bounce;
pub mod campaign;
pub mod cli;
pub mod clock;
pub mod dkim;
pub mod dns;
#[doc(hidden)]
pub mod fuzzing;
#[path = "gen.rs"]
pub mod generate;
pub mod journal;
pub mod outcome;
pub mod private;
pub mod report;
pub mod send;
pub mod shutdown;
pub mod smtp;
pub mod terminal;
pub mod verp;
