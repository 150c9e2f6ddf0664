//! Loading a campaign with everything needed to render it (`check`, `preview` and `send`
//! share it): the VERP/unsubscribe key from the environment, the list (the demo list written
//! first when asked to), the templates. Every problem is collected, not just the first.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

use super::exit;
use crate::campaign::{Campaign, Problem};
use crate::send::render::Renderer;
use crate::send::source::{Source, SourceOptions};
use crate::verp::VerpKey;

/// What the campaign is loaded for: `send` needs every secret; `check` and `preview` send
/// nothing, so a secret missing from their environment is a warning ("needed to send"), not a
/// problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Send,
    Inspect,
}

/// The placeholder key of the embedded demo, and of `check`/`preview` without the secret.
fn placeholder_key() -> VerpKey {
    VerpKey::new(b"blast-demo-key-not-secret").expect("long enough")
}

/// The HMAC key from the environment. A campaign whose nodes are all the embedded receiver
/// (nothing leaves the machine) may run without one: it gets a fixed demo key and a warning;
/// so do `check` and `preview` ([`Purpose::Inspect`]), which send nothing.
pub fn load_key(campaign: &Campaign, purpose: Purpose) -> Result<VerpKey, String> {
    let name = &campaign.envelope.secret_env;
    match std::env::var(name) {
        Ok(secret) => {
            VerpKey::new(secret.as_bytes()).map_err(|e| format!("environment variable {name}: {e}"))
        }
        Err(_) if campaign.all_embedded() => {
            eprintln!(
                "blast: warning: {name} is not set; using a fixed demo key (fine for the embedded receiver only)"
            );
            Ok(placeholder_key())
        }
        Err(_) if purpose == Purpose::Inspect => {
            eprintln!(
                "blast: warning: needed to send: environment variable {name} is not set (the HMAC secret for VERP and unsubscribe tokens, e.g. `export {name}=$(openssl rand -hex 32)`); tokens shown here are made with a placeholder key"
            );
            Ok(placeholder_key())
        }
        Err(_) => Err(format!(
            "environment variable {name} is not set: it must hold the HMAC secret for VERP and unsubscribe tokens (16+ random bytes, e.g. `export {name}=$(openssl rand -hex 32)`)"
        )),
    }
}

/// Source options for a campaign's list; writes the demo list first when asked to.
pub fn source_options(
    campaign: &Campaign,
    rejects: Option<PathBuf>,
) -> anyhow::Result<SourceOptions> {
    let r = &campaign.recipients;
    if let Some(rows) = r.generate
        && !r.path.exists()
    {
        if let Some(dir) = r.path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        eprintln!(
            "blast: writing the demo list ({rows} rows) to {} — first run only, a few seconds",
            r.path.display()
        );
        let tmp = r.path.with_extension("csv.tmp");
        let f = std::fs::File::create(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        crate::generate::write_recipients(
            std::io::BufWriter::new(f),
            &crate::generate::GenOptions {
                rows,
                ..Default::default()
            },
        )
        .with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, &r.path)
            .with_context(|| format!("cannot rename {} to {}", tmp.display(), r.path.display()))?;
    }
    Ok(SourceOptions {
        path: r.path.clone(),
        delimiter: r.delimiter,
        has_header: r.header,
        columns: r.columns.clone(),
        address_column: r.address_column.clone(),
        dedupe: r.dedupe,
        rejects_path: rejects,
        max_field_size: r.max_field_size,
        max_record_size: r.max_record_size,
    })
}

/// Loads the campaign and everything needed to render it, collecting every problem.
/// Returns the campaign, the open source and the renderer, or all problems found.
pub fn prepare(
    path: &Path,
    rejects: Option<PathBuf>,
    purpose: Purpose,
) -> Result<(Campaign, Source, Renderer), Vec<String>> {
    let campaign = Campaign::load(path).map_err(|e| lines(e.problems()))?;
    let mut problems = Vec::new();
    let key =
        load_key(&campaign, purpose).map_err(|e| problems.push(format!("{}: {e}", path.display())));
    for node in &campaign.nodes {
        if let Some(auth) = &node.auth
            && std::env::var_os(&auth.password_env).is_none()
        {
            let missing = format!(
                "node {:?}: environment variable {} (its AUTH password) is not set",
                node.name, auth.password_env
            );
            match purpose {
                Purpose::Send => problems.push(format!("{}: {missing}", path.display())),
                Purpose::Inspect => eprintln!("blast: warning: needed to send: {missing}"),
            }
        }
    }
    let source = source_options(&campaign, rejects)
        .map_err(|e| format!("{e:#}"))
        .and_then(|o| Source::open(o).map_err(|e| e.to_string()));
    let source = match source {
        Ok(s) => Some(s),
        Err(e) => {
            problems.push(e);
            None
        }
    };
    let renderer = match (&source, key) {
        (Some(s), Ok(key)) => match Renderer::new(&campaign, s.columns().clone(), key) {
            Ok(r) => Some(r),
            Err(errors) => {
                problems.extend(errors.iter().map(|e| e.to_string()));
                None
            }
        },
        _ => None,
    };
    match (source, renderer) {
        (Some(s), Some(r)) if problems.is_empty() => Ok((campaign, s, r)),
        _ => Err(problems),
    }
}

pub fn lines(problems: Vec<Problem>) -> Vec<String> {
    problems.iter().map(|p| p.to_string()).collect()
}

pub fn report_problems(problems: &[String]) -> ExitCode {
    let n = problems.len();
    eprintln!("blast: {n} problem{} found:", if n == 1 { "" } else { "s" });
    // Problems quote the list (header names, values) and template errors.
    for p in problems {
        eprintln!("  {}", crate::terminal::printable_lines(p));
    }
    ExitCode::from(exit::BAD_INPUT)
}
