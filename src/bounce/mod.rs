//! Bounce handling: everything that happens after a message has left.
//!
//! `bounce` owns the bounce sink ([`sink`]: the SMTP server side, the MX of the bounce domain,
//! that receives VERP-addressed bounces, complaints and auto-replies), their classification
//! ([`dsn`]: RFC 3464 delivery-status notifications, ARF complaints, provider and non-standard
//! formats) and the suppression list ([`suppression`]: the addresses never mailed again).
//!
//! It may use `clock`, `verp` (the token in a bounce's recipient), `journal` (a read-only
//! lookup of the address a row was sent to), the SMTP server side (`receiver`, the embedded
//! receiver the sink runs on) and `signals`. [`dsn`] uses nothing from the crate besides itself.

pub mod dsn;
pub mod sink;
pub mod suppression;
