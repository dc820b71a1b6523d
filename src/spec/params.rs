//! PostgreSQL's settings catalog per major version, as a real server's `pg_settings`
//! lists them (regenerate with `scripts/pg-settings.sh MAJOR`). Used to refuse unknown
//! parameters and bad values before anything runs (see `guc.rs`), and to tell whether a
//! change needs a restart (`postmaster`) or only a reload.

use std::sync::OnceLock;

/// `pg_settings` of a fresh Debian cluster, one setting per line: name, context,
/// vartype, unit, min_val, max_val, enumvals (comma-separated); `#` lines are comments.
const PG15: &str = include_str!("params/15.tsv");
/// A real server's `pg_available_extensions` (with contrib), by `scripts/pg-settings.sh`.
const PG15_EXTENSIONS: &str = include_str!("params/15.extensions");

/// The extensions PostgreSQL `version` (Debian's packages, with contrib) can create, or
/// `None` for a major without a list.
pub fn extensions(version: u32) -> Option<Vec<&'static str>> {
    let text = match version {
        15 => PG15_EXTENSIONS,
        _ => return None,
    };
    Some(
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect(),
    )
}

/// The majors pgform has a catalog for.
pub const CATALOGUED: [u32; 1] = [15];

/// One setting of the catalog.
#[derive(Debug, Clone, PartialEq)]
pub struct Setting {
    pub name: &'static str,
    /// pg_settings' context: `postmaster` (restart), `sighup` (reload), `internal`, ...
    pub context: &'static str,
    pub kind: Kind,
}

/// A setting's type with its limits, in the setting's base unit.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    Bool,
    Integer {
        unit: Option<Unit>,
        min: i64,
        max: i64,
    },
    Real {
        unit: Option<Unit>,
        min: f64,
        max: f64,
    },
    Enum(Vec<&'static str>),
    String,
}

/// A setting's base unit: what a bare number counts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Unit {
    pub quantity: Quantity,
    /// The base unit in bytes (memory) or microseconds (time): 8192 for `8kB`.
    pub scale: f64,
    /// As pg_settings writes it: `8kB`, `kB`, `ms`, `min`, ...
    pub label: &'static str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quantity {
    Memory,
    Time,
}

/// The units PostgreSQL accepts in a value, largest first, with their size in bytes or
/// microseconds (guc.c's memory and time conversion tables; whole numbers, so that a
/// conversion factor is one exact division, as in guc.c). Case matters.
pub const MEMORY_UNITS: [(&str, f64); 5] = [
    ("TB", 1024.0 * 1024.0 * 1024.0 * 1024.0),
    ("GB", 1024.0 * 1024.0 * 1024.0),
    ("MB", 1024.0 * 1024.0),
    ("kB", 1024.0),
    ("B", 1.0),
];
pub const TIME_UNITS: [(&str, f64); 6] = [
    ("d", 86_400_000_000.0),
    ("h", 3_600_000_000.0),
    ("min", 60_000_000.0),
    ("s", 1_000_000.0),
    ("ms", 1000.0),
    ("us", 1.0),
];

impl Unit {
    /// The base unit pg_settings names, e.g. `8kB` or `s`.
    fn parse(label: &'static str) -> Option<Unit> {
        let digits = label.find(|c: char| !c.is_ascii_digit()).unwrap_or(0);
        let (count, name) = label.split_at(digits);
        let count: f64 = if count.is_empty() {
            1.0
        } else {
            count.parse().ok()?
        };
        let (quantity, scale) = MEMORY_UNITS
            .iter()
            .map(|u| (Quantity::Memory, u))
            .chain(TIME_UNITS.iter().map(|u| (Quantity::Time, u)))
            .find(|(_, (n, _))| *n == name)
            .map(|(q, (_, s))| (q, *s))?;
        Some(Unit {
            quantity,
            scale: count * scale,
            label,
        })
    }

    /// The units a value of this setting may carry, largest first.
    pub fn accepted(&self) -> &'static [(&'static str, f64)] {
        match self.quantity {
            Quantity::Memory => &MEMORY_UNITS,
            Quantity::Time => &TIME_UNITS,
        }
    }
}

/// What pgform knows of a parameter name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Known {
    /// Known, with its pg_settings context.
    Context(&'static str),
    /// Not a parameter of this version.
    Unknown,
    /// pgform has no catalog for this version, or the name is an extension's: the name
    /// is not checked.
    Unchecked,
}

fn text(version: u32) -> Option<&'static str> {
    match version {
        15 => Some(PG15),
        _ => None,
    }
}

/// The catalog of `version`, parsed once.
pub fn catalog(version: u32) -> Option<&'static [Setting]> {
    static PARSED_15: OnceLock<Vec<Setting>> = OnceLock::new();
    let cell = match version {
        15 => &PARSED_15,
        _ => return None,
    };
    let text = text(version)?;
    Some(cell.get_or_init(|| parse_catalog(text)))
}

/// Parses the embedded file; a line that does not parse is a bug in the generator, caught
/// by the unit test that reads every line.
fn parse_catalog(text: &'static str) -> Vec<Setting> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(parse_line)
        .collect()
}

fn parse_line(line: &'static str) -> Option<Setting> {
    let f: Vec<&'static str> = line.split('\t').collect();
    let [name, context, vartype, unit, min, max, enumvals] = f[..] else {
        return None;
    };
    let unit = if unit.is_empty() {
        None
    } else {
        Some(Unit::parse(unit)?)
    };
    let kind = match vartype {
        "bool" => Kind::Bool,
        "integer" => Kind::Integer {
            unit,
            min: min.parse().ok()?,
            max: max.parse().ok()?,
        },
        "real" => Kind::Real {
            unit,
            min: min.parse().ok()?,
            max: real_bound(max.parse().ok()?),
        },
        "enum" => Kind::Enum(enumvals.split(',').collect()),
        "string" => Kind::String,
        _ => return None,
    };
    Some(Setting {
        name,
        context,
        kind,
    })
}

/// pg_settings prints real limits with 6 significant digits (`%g`): DBL_MAX, the limit of
/// most costs, comes out as 1.79769e+308, a little below it. The other limits are exact.
fn real_bound(max: f64) -> f64 {
    if max >= 1.79769e308 { f64::MAX } else { max }
}

/// The setting `name` of `version`, when pgform has that version's catalog.
pub fn setting(version: u32, name: &str) -> Option<&'static Setting> {
    catalog(version)?
        .iter()
        .find(|s| s.name.eq_ignore_ascii_case(name))
}

pub fn lookup(version: u32, name: &str) -> Known {
    // Names with a dot belong to extensions (pg_stat_statements.max): not in the catalog.
    if name.contains('.') {
        return Known::Unchecked;
    }
    match catalog(version) {
        None => Known::Unchecked,
        Some(_) => setting(version, name)
            .map(|s| Known::Context(s.context))
            .unwrap_or(Known::Unknown),
    }
}

/// True when changing `name` takes a server restart.
pub fn needs_restart(version: u32, name: &str) -> bool {
    lookup(version, name) == Known::Context("postmaster")
}

/// The known name closest to `name` (for "did you mean").
pub fn closest(version: u32, name: &str) -> Option<&'static str> {
    nearest(name, catalog(version)?.iter().map(|s| s.name), 3)
}

/// The candidate nearest to `word` (ignoring case) within `max` edits.
pub fn nearest<'a>(
    word: &str,
    candidates: impl Iterator<Item = &'a str>,
    max: usize,
) -> Option<&'a str> {
    let word = word.to_lowercase();
    candidates
        .map(|c| (distance(&c.to_lowercase(), &word), c))
        .filter(|(d, _)| *d <= max)
        .min()
        .map(|(_, c)| c)
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
        assert_eq!(closest(15, "zzzzzzzzzzzzzzzz"), None);
        assert_eq!(closest(16, "work_mem"), None);
        assert_eq!(lookup(15, "pg_stat_statements.max"), Known::Unchecked);
        assert_eq!(lookup(16, "anything"), Known::Unchecked);
        assert!(needs_restart(15, "max_connections"));
        assert!(!needs_restart(15, "work_mem"));
    }

    #[test]
    fn every_line_of_every_catalog_parses() {
        for v in CATALOGUED {
            let text = text(v).unwrap();
            let lines = text.lines().filter(|l| !l.starts_with('#')).count();
            assert_eq!(catalog(v).unwrap().len(), lines, "PostgreSQL {v}");
            assert!(lines > 300, "PostgreSQL {v} has {lines} settings");
        }
        assert!(catalog(14).is_none());
    }

    #[test]
    fn settings_carry_type_unit_and_limits() {
        let sb = setting(15, "shared_buffers").unwrap();
        let Kind::Integer { unit, min, max } = &sb.kind else {
            panic!("{sb:?}")
        };
        let unit = unit.unwrap();
        assert_eq!(
            (unit.quantity, unit.scale, unit.label, *min, *max),
            (Quantity::Memory, 8192.0, "8kB", 16, 1_073_741_823)
        );
        let Kind::Integer { unit, .. } = &setting(15, "checkpoint_timeout").unwrap().kind else {
            panic!()
        };
        assert_eq!(unit.unwrap().scale, 1e6);
        assert_eq!(unit.unwrap().quantity, Quantity::Time);
        assert_eq!(unit.unwrap().accepted()[0].0, "d");
        let Kind::Integer { unit, .. } = &setting(15, "log_rotation_age").unwrap().kind else {
            panic!()
        };
        assert_eq!(unit.unwrap().scale, 60e6);
        assert_eq!(setting(15, "fsync").unwrap().kind, Kind::Bool);
        assert_eq!(setting(15, "DateStyle").unwrap().kind, Kind::String);
        let Kind::Enum(values) = &setting(15, "ssl_max_protocol_version").unwrap().kind else {
            panic!()
        };
        assert_eq!(values[..2], ["", "TLSv1"]);
        let Kind::Real { unit, min, max } = &setting(15, "vacuum_cost_delay").unwrap().kind else {
            panic!()
        };
        assert_eq!((unit.unwrap().label, *min, *max), ("ms", 0.0, 100.0));
        assert_eq!(setting(16, "work_mem"), None);
        let Kind::Real { max, .. } = setting(15, "random_page_cost").unwrap().kind else {
            panic!()
        };
        assert_eq!(max, f64::MAX);
    }

    #[test]
    fn units_and_lines_that_do_not_parse() {
        assert_eq!(Unit::parse("16MB").unwrap().scale, 16.0 * 1024.0 * 1024.0);
        assert_eq!(Unit::parse("B").unwrap().scale, 1.0);
        assert_eq!(Unit::parse("us").unwrap().scale, 1.0);
        assert_eq!(Unit::parse("8XB"), None);
        assert_eq!(Unit::parse("xB"), None);
        assert_eq!(parse_line("a\tuser\tinteger\t\t1\t2"), None);
        assert_eq!(parse_line("a\tuser\tinteger\t\tx\t2\t"), None);
        assert_eq!(parse_line("a\tuser\tinteger\t\t1\tx\t"), None);
        assert_eq!(parse_line("a\tuser\treal\t\t1\tx\t"), None);
        assert_eq!(parse_line("a\tuser\treal\t\tx\t1\t"), None);
        assert_eq!(parse_line("a\tuser\tinteger\tparsecs\t1\t2\t"), None);
        assert_eq!(parse_line("a\tuser\tquaternion\t\t\t\t"), None);
        assert_eq!(
            parse_line("a\tuser\treal\t\t-1\t1e+06\t").unwrap().kind,
            Kind::Real {
                unit: None,
                min: -1.0,
                max: 1e6
            }
        );
    }

    #[test]
    fn nearest_ignores_case_and_limits_edits() {
        let names = ["remote_apply", "remote_write", "local"];
        assert_eq!(
            nearest("REMOTE_APLY", names.into_iter(), 2),
            Some("remote_apply")
        );
        assert_eq!(nearest("lcal", names.into_iter(), 1), Some("local"));
        assert_eq!(nearest("lc", names.into_iter(), 2), None);
        assert_eq!(distance("kitten", "sitting"), 3);
        assert_eq!(distance("", "abc"), 3);
        assert_eq!(distance("abc", ""), 3);
        assert_eq!(distance("abc", "abc"), 0);
    }
}
