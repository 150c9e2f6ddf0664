//! blast: a high-volume bulk-mail campaign sender.
//!
//! Data flows one way:
//! `campaign` (validated config) + `source` (streaming CSV) → `render` (templates + MIME)
//! → `dispatch` (bounded queue, retry, fallback) → `node` (SMTP connections via `smtp`)
//! → `outcome` → delivery `log` / `progress`.

pub mod address;
pub mod campaign;
pub mod cli;
pub mod clock;
pub mod direct;
pub mod dispatch;
pub mod dkim;
pub mod dns;
pub mod dsn;
#[path = "gen.rs"]
pub mod generate;
pub mod journal;
pub mod log;
pub mod node;
pub mod outcome;
pub mod progress;
pub mod receiver;
pub mod render;
pub mod retry;
pub mod send;
pub mod shard;
pub mod signals;
pub mod sink;
pub mod smtp;
pub mod source;
pub mod suppression;
pub mod verp;
