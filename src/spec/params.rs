//! PostgreSQL's parameters and their contexts, as `pg_settings` lists them, per major
//! version. Used to refuse unknown parameters before anything runs, and to tell whether
//! a change needs a restart (`postmaster`) or only a reload.

/// `name context` per line, from `SELECT name, context FROM pg_settings` on a fresh
/// Debian cluster of that major version.
const PG15: &str = include_str!("params/15.txt");

/// What pgform knows of a parameter name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Known {
    /// Known, with its pg_settings context.
    Context(&'static str),
    /// Not a parameter of this version.
    Unknown,
    /// pgform has no list for this version: the name is not checked.
    Unchecked,
}

fn list(version: u32) -> Option<&'static str> {
    match version {
        15 => Some(PG15),
        _ => None,
    }
}

pub fn lookup(version: u32, name: &str) -> Known {
    // Names with a dot belong to extensions (pg_stat_statements.max): not in the list.
    if name.contains('.') {
        return Known::Unchecked;
    }
    let Some(text) = list(version) else {
        return Known::Unchecked;
    };
    text.lines()
        .filter_map(|l| l.split_once(' '))
        .find(|(n, _)| *n == name)
        .map(|(_, c)| Known::Context(c))
        .unwrap_or(Known::Unknown)
}

/// True when changing `name` takes a server restart.
pub fn needs_restart(version: u32, name: &str) -> bool {
    lookup(version, name) == Known::Context("postmaster")
}

/// The known name closest to `name` (for "did you mean").
pub fn closest(version: u32, name: &str) -> Option<&'static str> {
    let text = list(version)?;
    text.lines()
        .filter_map(|l| l.split_once(' ').map(|(n, _)| n))
        .map(|n| (distance(n, name), n))
        .filter(|(d, _)| *d <= 3)
        .min()
        .map(|(_, n)| n)
}

/// Levenshtein distance, for short names.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for j in 0..b.len() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != b[j]))
                .min(row[j] + 1)
                .min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contexts_and_suggestions() {
        assert_eq!(lookup(15, "shared_buffers"), Known::Context("postmaster"));
        assert_eq!(lookup(15, "work_mem"), Known::Context("user"));
        assert_eq!(lookup(15, "wrok_mem"), Known::Unknown);
        assert_eq!(closest(15, "wrok_mem"), Some("work_mem"));
        assert_eq!(lookup(15, "pg_stat_statements.max"), Known::Unchecked);
        assert_eq!(lookup(16, "anything"), Known::Unchecked);
        assert!(needs_restart(15, "max_connections"));
        assert!(!needs_restart(15, "work_mem"));
    }
}
