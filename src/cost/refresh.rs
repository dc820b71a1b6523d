//! `pgform pricing refresh`: AWS Price List bulk files (`offers/v1.0/aws/AmazonEC2/
//! current/<region>/index.csv`) into a price file. An instance price is the one
//! on-demand row with Shared tenancy, Linux, no pre-installed software and capacity
//! status Used (Dedicated, Host, other systems, reserved terms and capacity
//! reservations are other rows); an EBS price the one on-demand GB-Mo row of the volume
//! type. Zero or several rows for a price is an error naming the type and the region.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};

use super::prices::PriceTable;

#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{} holds no <region>/index.csv\n    fix: point --from at AWS's offers/v1.0/aws/AmazonEC2/current folder (one folder per region)",
        dir.display()
    )]
    NoRegions { dir: PathBuf },
    #[error(
        "{file}: {problem}\n    fix: use an unmodified AmazonEC2 index.csv from the AWS Price List bulk API"
    )]
    Format { file: String, problem: String },
    #[error(
        "{file}: no on-demand Shared Linux row with capacity status Used prices {instance_type} in {region}\n    fix: use a complete index.csv for {region}"
    )]
    NoRow {
        file: String,
        region: String,
        instance_type: String,
    },
    #[error(
        "{file}: {count} rows price {what} in {region} (lines {lines}); exactly one must\n    fix: use an unmodified index.csv for {region}"
    )]
    Several {
        file: String,
        region: String,
        what: String,
        count: usize,
        lines: String,
    },
}

/// The prices of one region's offer file, and what the file says it is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Offer {
    pub publication_date: String,
    pub version: String,
    pub instances: BTreeMap<String, f64>,
    pub volumes: BTreeMap<String, f64>,
}

/// Splits CSV records (quoted fields with doubled quotes; a quoted field may hold a
/// line break), numbering each record by the line it starts on.
fn records(reader: impl BufRead) -> impl Iterator<Item = std::io::Result<(usize, Vec<String>)>> {
    let mut lines = reader.lines().enumerate();
    std::iter::from_fn(move || {
        let (n, first) = match lines.next()? {
            (n, Ok(l)) => (n + 1, l),
            (_, Err(e)) => return Some(Err(e)),
        };
        let mut text = first;
        // An odd number of quotes: the record goes on on the next line.
        while text.matches('"').count() % 2 == 1 {
            match lines.next() {
                Some((_, Ok(l))) => {
                    text.push('\n');
                    text.push_str(&l);
                }
                Some((_, Err(e))) => return Some(Err(e)),
                None => break,
            }
        }
        Some(Ok((n, split(&text))))
    })
}

fn split(record: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut quoted = false;
    let mut chars = record.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                fields.last_mut().unwrap().push('"');
            }
            ('"', _) => quoted = !quoted,
            (',', false) => fields.push(String::new()),
            (c, _) => fields.last_mut().unwrap().push(c),
        }
    }
    fields
}

/// Reads one region's AmazonEC2 offer: five metadata rows, the header, then products.
pub fn read_offer(reader: impl BufRead, region: &str, file: &str) -> Result<Offer, RefreshError> {
    let format = |problem: String| RefreshError::Format {
        file: file.to_string(),
        problem,
    };
    let io = |e: std::io::Error| format(format!("cannot read: {e}"));
    let mut rows = records(reader);
    let mut offer = Offer::default();
    for _ in 0..5 {
        let (n, meta) = rows
            .next()
            .transpose()
            .map_err(io)?
            .ok_or_else(|| format("ends before the five metadata rows".into()))?;
        match meta.first().map(String::as_str) {
            Some("Publication Date") => {
                offer.publication_date = meta.get(1).cloned().unwrap_or_default()
            }
            Some("Version") => offer.version = meta.get(1).cloned().unwrap_or_default(),
            Some("OfferCode") if meta.get(1).map(String::as_str) != Some("AmazonEC2") => {
                return Err(format(format!(
                    "line {n}: the offer is {:?}, not AmazonEC2",
                    meta.get(1)
                )));
            }
            _ => {}
        }
    }
    let (_, header) = rows
        .next()
        .transpose()
        .map_err(io)?
        .ok_or_else(|| format("has no header row after the metadata".into()))?;
    let column = |name: &str| {
        header
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| format(format!("has no `{name}` column")))
    };
    let term = column("TermType")?;
    let unit = column("Unit")?;
    let price = column("PricePerUnit")?;
    let currency = column("Currency")?;
    let family = column("Product Family")?;
    let instance_type = column("Instance Type")?;
    let tenancy = column("Tenancy")?;
    let os = column("Operating System")?;
    let software = column("Pre Installed S/W")?;
    let capacity = column("CapacityStatus")?;
    let volume = column("Volume API Name")?;
    let region_code = header.iter().position(|h| h == "Region Code");

    // Matching rows per type: (line, price). Candidates are the Shared Linux on-demand
    // rows of a type; each must end with exactly one match.
    let mut instances: BTreeMap<String, Vec<(usize, String)>> = BTreeMap::new();
    let mut volumes: BTreeMap<String, Vec<(usize, String)>> = BTreeMap::new();
    for row in rows {
        let (n, r) = row.map_err(io)?;
        let get = |i: usize| r.get(i).map(String::as_str).unwrap_or("");
        if get(term) != "OnDemand" || region_code.is_some_and(|i| get(i) != region) {
            continue;
        }
        let fam = get(family);
        if fam.starts_with("Compute Instance") && get(tenancy) == "Shared" && get(os) == "Linux" {
            let found = instances.entry(get(instance_type).to_string()).or_default();
            if get(software) == "NA"
                && get(capacity) == "Used"
                && get(unit) == "Hrs"
                && get(currency) == "USD"
            {
                found.push((n, get(price).to_string()));
            }
        } else if fam == "Storage"
            && get(unit) == "GB-Mo"
            && !get(volume).is_empty()
            && get(currency) == "USD"
        {
            volumes
                .entry(get(volume).to_string())
                .or_default()
                .push((n, get(price).to_string()));
        }
    }
    let one = |what: &str, rows: &[(usize, String)]| -> Result<Option<f64>, RefreshError> {
        match rows {
            [] => Ok(None),
            [(n, p)] => p
                .parse::<f64>()
                .ok()
                .filter(|p| p.is_finite() && *p > 0.0)
                .map(Some)
                .ok_or_else(|| {
                    format(format!(
                        "line {n}: the price of {what} in {region} is `{p}`, not a positive number"
                    ))
                }),
            several => Err(RefreshError::Several {
                file: file.to_string(),
                region: region.to_string(),
                what: what.to_string(),
                count: several.len(),
                lines: several
                    .iter()
                    .map(|(n, _)| n.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    };
    for (ty, rows) in &instances {
        match one(ty, rows)? {
            Some(p) => {
                offer.instances.insert(ty.clone(), p);
            }
            None => {
                return Err(RefreshError::NoRow {
                    file: file.to_string(),
                    region: region.to_string(),
                    instance_type: ty.clone(),
                });
            }
        }
    }
    for (vt, rows) in &volumes {
        if let Some(p) = one(&format!("EBS {vt}"), rows)? {
            offer.volumes.insert(vt.clone(), p);
        }
    }
    Ok(offer)
}

/// Reads every `<region>/index.csv` under `dir` into one price file's text.
pub fn refresh_dir(dir: &Path) -> Result<(String, PriceTable), RefreshError> {
    let read_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| RefreshError::Read { path, source }
    };
    let mut regions: Vec<(String, PathBuf)> = std::fs::read_dir(dir)
        .map_err(read_err(dir))?
        .filter_map(Result::ok)
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                e.path().join("index.csv"),
            )
        })
        .filter(|(_, p)| p.is_file())
        .collect();
    regions.sort();
    if regions.is_empty() {
        return Err(RefreshError::NoRegions {
            dir: dir.to_path_buf(),
        });
    }
    let mut header = String::from(
        "# pgform price file, written by `pgform pricing refresh` from AWS Price List bulk files\n\
         # (AmazonEC2). EC2: on-demand, Shared tenancy, Linux, no pre-installed software,\n\
         # capacity status Used, one row per price; EBS: on-demand GB-Mo. It overrides the\n\
         # embedded table entry by entry (`pgform cost --prices FILE` or `[cost] prices`).\n",
    );
    let mut table = PriceTable::default();
    for (region, path) in &regions {
        let file = std::fs::File::open(path).map_err(read_err(path))?;
        let name = path.display().to_string();
        let offer = read_offer(std::io::BufReader::new(file), region, &name)?;
        header.push_str(&format!(
            "#   {region}: publication date {}, version {}: {} instance types, {} volume types\n",
            offer.publication_date,
            offer.version,
            offer.instances.len(),
            offer.volumes.len()
        ));
        let mut text = String::new();
        for (ty, p) in &offer.instances {
            text.push_str(&format!("ec2\t{region}\t{ty}\t{p}\thour\n"));
        }
        for (vt, p) in &offer.volumes {
            text.push_str(&format!("ebs\t{region}\t{vt}\t{p}\tGB-month\n"));
        }
        table
            .merge_text(&text, &name)
            .map_err(|e| RefreshError::Format {
                file: name.clone(),
                problem: e.to_string(),
            })?;
    }
    Ok((format!("{header}{}", table.to_text()), table))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = include_str!("../../tests/fixtures/aws-offer-us-east-1.csv");

    #[test]
    fn csv_fields_with_quotes_commas_and_line_breaks() {
        let text = "\"a\",\"b, c\",\"say \"\"hi\"\"\"\n\"x\",\"two\nlines\",y\n";
        let got: Vec<_> = records(text.as_bytes()).map(Result::unwrap).collect();
        assert_eq!(
            got[0],
            (1, vec!["a".into(), "b, c".into(), "say \"hi\"".into()])
        );
        assert_eq!(
            got[1],
            (2, vec!["x".into(), "two\nlines".into(), "y".into()])
        );
    }

    #[test]
    fn the_filter_keeps_only_the_shared_linux_on_demand_used_row() {
        let offer = read_offer(FIXTURE.as_bytes(), "us-east-1", "f.csv").unwrap();
        // The fixture also prices t3.medium as Dedicated, Host, Windows, reserved,
        // unused and allocated capacity reservations, SQL Server, and in a Local Zone.
        assert_eq!(offer.instances["t3.medium"], 0.0416);
        assert_eq!(offer.instances["t3a.large"], 0.0752);
        assert_eq!(offer.instances.len(), 2, "{:?}", offer.instances);
        assert_eq!(offer.volumes["gp3"], 0.08);
        assert_eq!(offer.publication_date, "2025-03-01T00:00:00Z");
    }

    #[test]
    fn a_price_matched_by_two_rows_is_an_error_naming_type_and_region() {
        let duplicate = FIXTURE
            .lines()
            .find(|l| {
                l.contains("\"t3a.large\"") && l.contains("\"Used\"") && l.contains("\"OnDemand\"")
            })
            .unwrap();
        let text = format!("{FIXTURE}{duplicate}\n");
        let e = read_offer(text.as_bytes(), "us-east-1", "f.csv").unwrap_err();
        assert!(matches!(e, RefreshError::Several { count: 2, .. }), "{e}");
        let e = e.to_string();
        assert!(e.contains("2 rows price t3a.large in us-east-1"), "{e}");
    }

    #[test]
    fn a_type_with_no_used_row_is_an_error_naming_type_and_region() {
        // Only t3.medium's capacity-reservation rows are left.
        let text: String = FIXTURE
            .lines()
            .filter(|l| !(l.contains("\"t3.medium\"") && l.contains("\"Used\"")))
            .map(|l| format!("{l}\n"))
            .collect();
        let e = read_offer(text.as_bytes(), "us-east-1", "f.csv")
            .unwrap_err()
            .to_string();
        assert!(e.contains("prices t3.medium in us-east-1"), "{e}");
    }

    #[test]
    fn metadata_and_columns_are_checked() {
        let e = read_offer(
            "\"FormatVersion\",\"v1.0\"\n".as_bytes(),
            "us-east-1",
            "f.csv",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("five metadata rows"), "{e}");
        let head: String = FIXTURE.lines().take(5).map(|l| format!("{l}\n")).collect();
        let e = read_offer(
            format!("{head}\"SKU\",\"TermType\"\n").as_bytes(),
            "us-east-1",
            "f.csv",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("no `Unit` column"), "{e}");
    }
}
