use std::fmt;
use std::path::PathBuf;

/// A line and column in the desired-state file (1-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub line: usize,
    pub column: usize,
}

impl Location {
    /// The location of a byte offset in `text`.
    pub fn of_offset(text: &str, offset: usize) -> Location {
        let before = &text[..offset.min(text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
        Location { line, column }
    }
}

/// One thing wrong with the file: where, which field, what, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub location: Option<Location>,
    /// Dotted path of the field, e.g. `postgres.replicas`.
    pub field: String,
    pub message: String,
    pub fix: Option<String>,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}", self.message)?;
        } else {
            write!(f, "{}: {}", self.field, self.message)?;
        }
        if let Some(fix) = &self.fix {
            write!(f, "\n    fix: {fix}")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", render(path, problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

impl SpecError {
    pub fn problems(&self) -> &[Problem] {
        match self {
            SpecError::Invalid { problems, .. } => problems,
            SpecError::Read { .. } => &[],
        }
    }
}

fn render(path: &std::path::Path, problems: &[Problem]) -> String {
    let mut out = format!(
        "{} has {} problem{}:",
        path.display(),
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    );
    for p in problems {
        match p.location {
            Some(l) => out.push_str(&format!(
                "\n  {}:{}:{}: {p}",
                path.display(),
                l.line,
                l.column
            )),
            None => out.push_str(&format!("\n  {}: {p}", path.display())),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_to_lines_and_columns() {
        let text = "ab\ncde\n";
        for (offset, line, column) in [(0, 1, 1), (1, 1, 2), (3, 2, 1), (5, 2, 3), (99, 3, 1)] {
            assert_eq!(
                Location::of_offset(text, offset),
                Location { line, column },
                "{offset}"
            );
        }
    }

    #[test]
    fn problems_render_with_field_location_and_fix() {
        let p = |field: &str, fix: Option<&str>, line: Option<usize>| Problem {
            location: line.map(|line| Location { line, column: 3 }),
            field: field.into(),
            message: "is wrong".into(),
            fix: fix.map(String::from),
        };
        assert_eq!(
            p("a.b", Some("do x"), None).to_string(),
            "a.b: is wrong\n    fix: do x"
        );
        assert_eq!(p("", None, None).to_string(), "is wrong");
        let one = SpecError::Invalid {
            path: "c.toml".into(),
            problems: vec![p("a", None, Some(2))],
        };
        assert_eq!(
            one.to_string(),
            "c.toml has 1 problem:\n  c.toml:2:3: a: is wrong"
        );
        assert_eq!(one.problems().len(), 1);
        let two = SpecError::Invalid {
            path: "c.toml".into(),
            problems: vec![p("a", None, Some(2)), p("b", Some("fix it"), None)],
        };
        assert_eq!(
            two.to_string(),
            "c.toml has 2 problems:\n  c.toml:2:3: a: is wrong\n  c.toml: b: is wrong\n    fix: fix it"
        );
        let read = SpecError::Read {
            path: "c.toml".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        assert!(read.to_string().starts_with("cannot read c.toml: "));
        assert!(read.problems().is_empty());
    }
}
