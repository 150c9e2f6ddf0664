//! The list's columns: names from the header (or the configuration), checked once, with the
//! address column found.

use std::collections::HashMap;
use std::path::Path;

use super::SourceError;
use super::validate::find_control;

/// Column names shared (via `Arc`) with the renderer so templates can resolve
/// names to indexes once, not per row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Columns {
    names: Vec<String>,
    lookup: HashMap<String, usize>,
    address: usize,
}

impl Columns {
    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn index(&self, name: &str) -> Option<usize> {
        // Templates look columns up on every variable of every message: for the usual handful
        // of columns comparing names is cheaper than hashing one (SipHash).
        if self.names.len() <= 16 {
            return self.names.iter().position(|n| n == name);
        }
        self.lookup.get(name).copied()
    }

    pub fn address_index(&self) -> usize {
        self.address
    }

    /// Human name for field `i`, also for fields beyond the header.
    pub(super) fn describe(&self, i: usize) -> String {
        match self.names.get(i) {
            Some(name) => name.clone(),
            None => format!("#{}", i + 1),
        }
    }
}

pub(crate) fn build_columns(
    path: &Path,
    names: Vec<String>,
    address_column: &str,
) -> Result<Columns, SourceError> {
    let mut lookup = HashMap::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        if name.is_empty() {
            return Err(SourceError::EmptyColumnName {
                path: path.to_owned(),
                position: i + 1,
            });
        }
        if find_control(name).is_some() {
            return Err(SourceError::InvalidColumnName {
                path: path.to_owned(),
                position: i + 1,
                name: name.clone(),
            });
        }
        if lookup.insert(name.clone(), i).is_some() {
            return Err(SourceError::DuplicateColumn {
                path: path.to_owned(),
                name: name.clone(),
            });
        }
    }
    let Some(&address) = lookup.get(address_column) else {
        return Err(SourceError::MissingAddressColumn {
            path: path.to_owned(),
            column: address_column.to_owned(),
            available: names,
        });
    };
    Ok(Columns {
        names,
        lookup,
        address,
    })
}
