//! The price table: the embedded file (`aws.tsv`, rebuilt by `scripts/aws-prices.py`)
//! and price files written by `pgform pricing refresh`, which override it entry by entry.
//! A price that is not in a table is unknown (`None`), never 0.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// The embedded table: sources, dates and the trust rule are in its header.
pub const EMBEDDED: &str = include_str!("aws.tsv");

/// What a price is for; the file's first column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PriceKind {
    /// An EC2 instance type, on-demand Linux, per hour.
    Ec2,
    /// An EBS volume type, per GB-month.
    Ebs,
    /// Provisioned IOPS of a volume type, per IOPS-month (gp3: above the 3,000 included).
    EbsIops,
    /// Throughput of a volume type, per MB/s-month (gp3: above the 125 included).
    EbsThroughput,
    /// A public IPv4 address, per hour.
    Ipv4,
    /// Data transfer to another AWS region, per GB.
    Transfer,
}

impl PriceKind {
    const ALL: [PriceKind; 6] = [
        PriceKind::Ec2,
        PriceKind::Ebs,
        PriceKind::EbsIops,
        PriceKind::EbsThroughput,
        PriceKind::Ipv4,
        PriceKind::Transfer,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PriceKind::Ec2 => "ec2",
            PriceKind::Ebs => "ebs",
            PriceKind::EbsIops => "ebs-iops",
            PriceKind::EbsThroughput => "ebs-throughput",
            PriceKind::Ipv4 => "ipv4",
            PriceKind::Transfer => "transfer",
        }
    }

    /// The unit one price is for.
    pub fn unit(self) -> &'static str {
        match self {
            PriceKind::Ec2 | PriceKind::Ipv4 => "hour",
            PriceKind::Ebs => "GB-month",
            PriceKind::EbsIops => "IOPS-month",
            PriceKind::EbsThroughput => "MB/s-month",
            PriceKind::Transfer => "GB",
        }
    }

    fn parse(s: &str) -> Option<PriceKind> {
        PriceKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for PriceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PriceError {
    #[error("{file}:{line}: {problem}\n    fix: {fix}")]
    Line {
        file: String,
        line: usize,
        problem: String,
        fix: String,
    },
    #[error("cannot read the price file {}: {source}\n    fix: pass an existing file (`pgform pricing refresh` writes one)", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Prices by (kind, region, name), with where they came from.
#[derive(Debug, Clone, Default)]
pub struct PriceTable {
    prices: BTreeMap<(PriceKind, String, String), f64>,
    /// The files the prices came from, the embedded one first.
    pub sources: Vec<String>,
}

impl PriceTable {
    /// The embedded table.
    pub fn embedded() -> PriceTable {
        // The file is checked by the unit tests: a parse error here is a build defect.
        let mut t = PriceTable::default();
        t.merge_text(EMBEDDED, "embedded aws.tsv")
            .expect("the embedded price table parses");
        t
    }

    /// The embedded table's prices for one region (all of it is checked by the unit
    /// tests; parsing only the region keeps every plan quick).
    pub fn embedded_for(region: &str) -> PriceTable {
        let tab = format!("\t{region}\t");
        let lines: String = EMBEDDED
            .lines()
            .filter(|l| l.contains(&tab))
            .flat_map(|l| [l, "\n"])
            .collect();
        let mut t = PriceTable::default();
        t.merge_text(&lines, "embedded aws.tsv")
            .expect("the embedded price table parses");
        t
    }

    /// The embedded table for `region`, overridden by the entries of `file` when given.
    pub fn load(region: &str, file: Option<&Path>) -> Result<PriceTable, PriceError> {
        let mut t = PriceTable::embedded_for(region);
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| PriceError::Read {
                path: path.to_path_buf(),
                source,
            })?;
            t.merge_text(&text, &path.display().to_string())?;
        }
        Ok(t)
    }

    /// Adds (or overrides) the entries of a price file's text. Refuses a 0, a negative
    /// or unreadable price, an unknown kind, and an entry given twice in one file.
    pub fn merge_text(&mut self, text: &str, name: &str) -> Result<(), PriceError> {
        let mut seen = BTreeMap::new();
        for (n, raw) in text.lines().enumerate() {
            let line = raw.trim_end();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |problem: String, fix: &str| PriceError::Line {
                file: name.to_string(),
                line: n + 1,
                problem,
                fix: fix.to_string(),
            };
            let cols: Vec<&str> = line.split('\t').collect();
            let [kind, region, item, price, ..] = cols[..] else {
                return Err(bad(
                    format!(
                        "expected kind, region, name, price, unit separated by tabs, found `{line}`"
                    ),
                    "write one price a line, tab-separated",
                ));
            };
            let kind = PriceKind::parse(kind).ok_or_else(|| {
                bad(
                    format!("unknown price kind `{kind}`"),
                    "use ec2, ebs, ebs-iops, ebs-throughput, ipv4 or transfer",
                )
            })?;
            let value: f64 = price
                .parse()
                .ok()
                .filter(|p: &f64| p.is_finite() && *p > 0.0)
                .ok_or_else(|| {
                    bad(
                        format!("the price of {kind} {item} in {region} is `{price}`, not a positive number"),
                        "leave out a price that is not known: it then prints as unknown",
                    )
                })?;
            let key = (kind, region.to_string(), item.to_string());
            if let Some(first) = seen.insert(key.clone(), n + 1) {
                return Err(bad(
                    format!("{kind} {item} in {region} is priced twice (also on line {first})"),
                    "keep one line per price",
                ));
            }
            self.prices.insert(key, value);
        }
        self.sources.push(name.to_string());
        Ok(())
    }

    pub fn get(&self, kind: PriceKind, region: &str, name: &str) -> Option<f64> {
        self.prices
            .get(&(kind, region.to_string(), name.to_string()))
            .copied()
    }

    pub fn instance_hour(&self, region: &str, instance_type: &str) -> Option<f64> {
        self.get(PriceKind::Ec2, region, instance_type)
    }

    pub fn volume_gb_month(&self, region: &str, volume_type: &str) -> Option<f64> {
        self.get(PriceKind::Ebs, region, volume_type)
    }

    pub fn len(&self) -> usize {
        self.prices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.prices.is_empty()
    }

    /// The table as a price file (what `pricing refresh` writes after its header).
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for ((kind, region, name), price) in &self.prices {
            out.push_str(&format!(
                "{kind}\t{region}\t{name}\t{price}\t{}\n",
                kind.unit()
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_table_has_the_known_public_prices() {
        let t = PriceTable::embedded();
        assert!(t.len() > 5000, "{}", t.len());
        assert_eq!(t.instance_hour("us-east-1", "t3.medium"), Some(0.0416));
        assert_eq!(t.instance_hour("us-east-1", "t3a.large"), Some(0.0752));
        // 3.9.1 says 0.1177 here (a Dedicated row): the trust rule keeps the shared price.
        assert_eq!(t.instance_hour("eu-west-1", "m6i.large"), Some(0.107));
        assert_eq!(t.volume_gb_month("us-east-1", "gp3"), Some(0.08));
        assert_eq!(t.get(PriceKind::EbsIops, "us-east-1", "gp3"), Some(0.005));
        assert_eq!(t.get(PriceKind::Ipv4, "us-east-1", "public"), Some(0.005));
        assert_eq!(
            t.get(PriceKind::Transfer, "us-east-1", "inter-region"),
            Some(0.02)
        );
        // Unknown is None, never 0.
        assert_eq!(t.instance_hour("us-east-1", "t9.huge"), None);
        assert_eq!(t.instance_hour("mars-north-1", "t3.medium"), None);
    }

    #[test]
    fn embedded_table_holds_no_zero_and_no_off_scale_cell() {
        // 3.9.1 has 0 for t3.medium in us-east-1 and a Dedicated-like 0.0487 in eu-west-1.
        let t = PriceTable::embedded();
        assert!(t.prices.values().all(|p| *p > 0.0));
        assert_eq!(t.instance_hour("eu-west-1", "t3.medium"), Some(0.0456));
    }

    #[test]
    fn one_region_of_the_embedded_table_is_the_same_prices() {
        let all = PriceTable::embedded();
        let one = PriceTable::embedded_for("eu-west-1");
        assert!(one.len() > 100);
        for ((kind, region, name), price) in &one.prices {
            assert_eq!(region, "eu-west-1");
            assert_eq!(all.get(*kind, region, name), Some(*price));
        }
        let n = all.prices.keys().filter(|k| k.1 == "eu-west-1").count();
        assert_eq!(one.len(), n);
    }

    #[test]
    fn a_file_overrides_entry_by_entry() {
        let mut t = PriceTable::embedded();
        t.merge_text("ec2\tus-east-1\tt3.medium\t0.05\thour\n", "mine.tsv")
            .unwrap();
        assert_eq!(t.instance_hour("us-east-1", "t3.medium"), Some(0.05));
        assert_eq!(t.instance_hour("us-east-1", "t3a.large"), Some(0.0752));
        assert_eq!(t.sources, ["embedded aws.tsv", "mine.tsv"]);
    }

    #[test]
    fn bad_lines_are_refused_with_the_line_and_the_fix() {
        for (text, says) in [
            (
                "ec2\tus-east-1\tt3.medium\t0\thour\n",
                "not a positive number",
            ),
            ("ec2\tus-east-1\tt3.medium\tcheap\thour\n", "`cheap`"),
            ("gpu\tus-east-1\tx\t1\thour\n", "unknown price kind `gpu`"),
            ("ec2 us-east-1 t3.medium 1\n", "separated by tabs"),
            (
                "ec2\tus-east-1\tt3.medium\t1\thour\n# c\nec2\tus-east-1\tt3.medium\t2\thour\n",
                "priced twice (also on line 1)",
            ),
        ] {
            let e = PriceTable::default()
                .merge_text(text, "p.tsv")
                .unwrap_err()
                .to_string();
            assert!(e.contains(says), "{e}");
            assert!(e.starts_with("p.tsv:"), "{e}");
            assert!(e.contains("fix:"), "{e}");
        }
    }
}
