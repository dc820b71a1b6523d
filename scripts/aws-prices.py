#!/usr/bin/env python3
"""Rebuilds src/cost/aws.tsv, pgform's embedded AWS price table.

Sources, fetched through their normal clients into a temporary directory:
  - apache-libcloud 3.9.1 from PyPI (`pip download`): libcloud/data/pricing.json
  - Debian bookworm's python3-libcloud 3.4.1-5 (`apt-get download`, `dpkg -x`): the
    same file, older and clean.
EC2 prices are kept only where they can be trusted (the rule is written into the file's
header, see TRUST below). EBS, public IPv4 and inter-region transfer prices are not in
either source: they are HAND below, entered by hand and dated.

Usage: python3 scripts/aws-prices.py [OUT]   (default: src/cost/aws.tsv)
"""

import collections
import datetime
import glob
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile

PIP_VERSION = "3.9.1"
DEB_VERSION = "3.4.1-5"

TRUST = """\
# Trust rule for EC2 prices (on-demand, Linux, per hour). libcloud's scraper lets
# Dedicated, Host and capacity-reservation rows overwrite the shared price, and writes 0
# where it found none, so 3.9.1 alone cannot be trusted; 3.4.1 is older but clean. A
# price is kept when:
#   1. both sources hold it and agree (a 0 is never kept); or
#   2. its family (m6i in m6i.large) in that region has prices kept by rule 1 that scale
#      with size (nano 1/16, micro 1/8, small 1/4, medium 1/2, large 1, xlarge 2,
#      Nxlarge 2N), and the price is what that scale gives (within the sources'
#      rounding): a newer size, or the source whose cell is right where they differ; or
#   3. the family has no price kept by rule 1 in that region (a family or region newer
#      than 3.4.1): at least 4 sizes, and more than two thirds of the family's non-zero
#      cells in 3.9.1, scale to one price per unit, and the price is one of them.
# Everything else is dropped and prints as "unknown": sizes without a scale (metal,
# metal-24xl), families whose sizes do not scale (GPU families), cells off the scale
# (a Dedicated or Host price is about 10% above it), zeros."""

# Hand-entered (USD), from AWS's public price pages (Amazon EBS pricing; Amazon VPC
# pricing for public IPv4, charged since 2024-02-01; EC2 on-demand data transfer), as
# published in 2025. Entered 2026-11-29; not fetched. Regions not listed are unknown.
HAND_DATE = "2026-11-29"
EBS_US = {  # us-east-1, us-east-2 and us-west-2 share EBS prices
    ("ebs", "gp3"): 0.08, ("ebs-iops", "gp3"): 0.005, ("ebs-throughput", "gp3"): 0.04,
    ("ebs", "gp2"): 0.10,
    ("ebs", "io1"): 0.125, ("ebs-iops", "io1"): 0.065,
    ("ebs", "io2"): 0.125, ("ebs-iops", "io2"): 0.065,
    ("ebs", "st1"): 0.045, ("ebs", "sc1"): 0.015, ("ebs", "standard"): 0.05,
}
HAND = {
    "us-east-1": EBS_US,
    "us-east-2": EBS_US,
    "us-west-2": EBS_US,
    "eu-west-1": {
        ("ebs", "gp3"): 0.088, ("ebs-iops", "gp3"): 0.0055, ("ebs-throughput", "gp3"): 0.044,
        ("ebs", "gp2"): 0.11,
        ("ebs", "io1"): 0.138, ("ebs-iops", "io1"): 0.072,
        ("ebs", "io2"): 0.138, ("ebs-iops", "io2"): 0.072,
        ("ebs", "st1"): 0.05, ("ebs", "sc1"): 0.0168, ("ebs", "standard"): 0.055,
    },
    "eu-central-1": {
        ("ebs", "gp3"): 0.0952, ("ebs-iops", "gp3"): 0.006, ("ebs-throughput", "gp3"): 0.048,
        ("ebs", "gp2"): 0.119,
        ("ebs", "io1"): 0.149, ("ebs-iops", "io1"): 0.078,
        ("ebs", "io2"): 0.149, ("ebs-iops", "io2"): 0.078,
        ("ebs", "st1"): 0.054, ("ebs", "sc1"): 0.018,
    },
}
# Data transfer from these regions to another AWS region, per GB.
TRANSFER = {r: 0.02 for r in ["us-east-1", "us-east-2", "us-west-2", "eu-west-1", "eu-central-1"]}
# A public IPv4 address (in use or idle), per hour, in every commercial region.
IPV4 = 0.005
UNITS = {"ebs": "GB-month", "ebs-iops": "IOPS-month", "ebs-throughput": "MB/s-month"}


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def fetch(tmp):
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
         f"apache-libcloud=={PIP_VERSION}", "-d", tmp],
        check=True,
    )
    subprocess.run(["apt-get", "download", f"python3-libcloud={DEB_VERSION}"], cwd=tmp, check=True)
    wheel = glob.glob(os.path.join(tmp, "apache_libcloud-*.whl"))[0]
    deb = glob.glob(os.path.join(tmp, "python3-libcloud_*.deb"))[0]
    with zipfile.ZipFile(wheel) as z:
        new = json.loads(z.read("libcloud/data/pricing.json"))
    subprocess.run(["dpkg", "-x", deb, os.path.join(tmp, "deb")], check=True)
    old_path = glob.glob(os.path.join(tmp, "deb", "**", "libcloud", "data", "pricing.json"), recursive=True)[0]
    with open(old_path) as f:
        old = json.load(f)
    return (new, os.path.basename(wheel), sha256(wheel)), (old, os.path.basename(deb), sha256(deb))


def size_units(size):
    fixed = {"nano": 0.25, "micro": 0.5, "small": 1, "medium": 2, "large": 4, "xlarge": 8}
    if size in fixed:
        return fixed[size]
    m = re.fullmatch(r"(\d+)xlarge", size)
    return 8 * int(m.group(1)) if m else None


def rounding(p):
    """Half a unit of the last digit the source kept (at least 3 decimals)."""
    text = repr(p)
    decimals = len(text.split(".")[1]) if "." in text else 0
    return 0.5 * 10 ** -max(decimals, 3)


def fits(price, units, ref_price, ref_units):
    """Whether `price` is what the reference's price per unit gives for `units`."""
    expected = ref_price / ref_units * units
    return abs(price - expected) <= rounding(price) + rounding(ref_price) * units / ref_units + 1e-9


def trusted(new, old):
    """{(type, region): price} under the trust rule, and counts per rule."""
    agreed = {}
    for t, regions in old.items():
        for r, o in regions.items():
            n = new.get(t, {}).get(r)
            if n is not None and o > 0 and abs(o - n) < 1e-9:
                agreed[(t, r)] = o
    families = collections.defaultdict(list)  # (family, region) -> [(type, units)]
    for t in set(new) | set(old):
        if "." not in t:
            continue
        family, size = t.split(".", 1)
        for r in set(new.get(t, {})) | set(old.get(t, {})):
            families[(family, r)].append((t, size_units(size)))
    kept = dict(agreed)
    counts = collections.Counter({"1": len(agreed)})
    for (family, r), members in families.items():
        anchors = [(agreed[(t, r)], u) for t, u in members if (t, r) in agreed and u]
        if anchors:
            ref = max(anchors, key=lambda a: a[1])
            if not all(fits(p, u, *ref) for p, u in anchors):
                continue  # the family does not scale: only rule 1
            for t, u in members:
                if (t, r) in kept or not u:
                    continue
                for p in (new.get(t, {}).get(r), old.get(t, {}).get(r)):
                    if p and fits(p, u, *ref):
                        kept[(t, r)] = p
                        counts["2"] += 1
                        break
        else:
            cells = [(new[t][r], u, t) for t, u in members if u and new.get(t, {}).get(r)]
            best = []
            for ref in sorted(cells, key=lambda c: -c[1]):
                group = [c for c in cells if fits(c[0], c[1], ref[0], ref[1])]
                if len(group) > len(best):
                    best = group
            if len(best) >= 4 and 3 * len(best) > 2 * len(cells):
                for p, _, t in best:
                    kept[(t, r)] = p
                    counts["3"] += 1
    return kept, counts


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "src", "cost", "aws.tsv")
    with tempfile.TemporaryDirectory() as tmp:
        (new, new_file, new_sha), (old, old_file, old_sha) = fetch(tmp)
    new_ec2, old_ec2 = new["compute"]["ec2_linux"], old["compute"]["ec2_linux"]
    kept, counts = trusted(new_ec2, old_ec2)
    regions = sorted({r for _, r in kept})
    # Rule 3 checked where it can be: applied to every family of 3.9.1 alone, against
    # the cells 3.4.1 holds.
    alone, _ = trusted(new_ec2, {})
    checked = [(p, old_ec2[t][r]) for (t, r), p in alone.items() if old_ec2.get(t, {}).get(r)]
    agree3 = sum(1 for p, o in checked if abs(p - o) < 1e-9)
    day = lambda d: datetime.datetime.fromtimestamp(int(d), datetime.timezone.utc).date()
    cells_new = sum(1 for v in new_ec2.values() for p in v.values())
    lines = [
        "# pgform's embedded AWS price table, USD. Rebuilt by scripts/aws-prices.py; do not edit.",
        "# Columns: kind, region, name, price, unit. A price that is not here is unknown (never 0).",
        "#",
        "# EC2 on-demand Linux, per hour, from Apache Libcloud's libcloud/data/pricing.json:",
        f"#   {new_file} (PyPI, apache-libcloud {PIP_VERSION}), sha256 {new_sha},",
        f"#     prices updated {day(new['updated'])}: {len(new_ec2)} types, {cells_new} cells;",
        f"#   {old_file} (Debian bookworm, python3-libcloud {DEB_VERSION}), sha256 {old_sha},",
        f"#     prices updated {day(old['updated'])}: {len(old_ec2)} types.",
        TRUST,
        f"# Kept: {counts['1']} by rule 1, {counts['2']} by rule 2, {counts['3']} by rule 3;"
        f" {len({t for t, _ in kept})} types in {len(regions)} regions.",
        f"# Rule 3 checked: applied to 3.9.1 alone, it keeps {len(checked)} cells that 3.4.1 also"
        f" holds, and {agree3} of them equal 3.4.1's price.",
        "# (With 3 sizes and half the cells instead, 56 of 3173 were a Dedicated price.)",
        "#",
        f"# Entered by hand on {HAND_DATE} from AWS's public price pages (Amazon EBS pricing,",
        "# Amazon VPC pricing, EC2 on-demand data transfer), as published in 2025; neither",
        "# libcloud copy has them. ebs: GB-month per volume type; ebs-iops: IOPS-month (gp3:",
        "# above the 3,000 included; io1/io2: every provisioned IOPS, first tier);",
        "# ebs-throughput: MB/s-month above gp3's included 125; ipv4: a public IPv4 address per",
        "# hour (every region with EC2 prices here); transfer: per GB to another AWS region.",
        "# `pgform pricing refresh` rebuilds EC2 and EBS GB-month prices from AWS's own files.",
    ]
    for (t, r) in sorted(kept, key=lambda k: (k[1], k[0])):
        lines.append(f"ec2\t{r}\t{t}\t{kept[(t, r)]}\thour")
    for r in sorted(HAND):
        for (kind, name), p in sorted(HAND[r].items()):
            lines.append(f"{kind}\t{r}\t{name}\t{p}\t{UNITS[kind]}")
    for r in regions:
        lines.append(f"ipv4\t{r}\tpublic\t{IPV4}\thour")
    for r, p in sorted(TRANSFER.items()):
        lines.append(f"transfer\t{r}\tinter-region\t{p}\tGB")
    with open(out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {out}: {len(kept)} EC2 prices", file=sys.stderr)


if __name__ == "__main__":
    main()
