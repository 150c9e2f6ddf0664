//! blast: a high-volume bulk-mail campaign sender.
//!
//! Data flows one way:
//! `campaign` (validated config) + `source` (streaming CSV) → `render` (templates + MIME)
//! → `dispatch` (bounded queue, retry, fallback) → `node` (SMTP connections via `smtp`)
//! → `outcome` → delivery `log` / `progress`.

pub mod address;
pub mod bounce;
pub mod campaign;
pub mod cli;
pub mod clock;
pub mod dkim;
pub mod dns;
#[path = "gen.rs"]
pub mod generate;
pub mod journal;
pub mod outcome;
pub mod report;
pub mod send;
pub mod shutdown;
pub mod smtp;
pub mod verp;
