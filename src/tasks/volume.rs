//! The `data_volume` module: PostgreSQL's data on its own disk (an EBS volume, or a
//! listed host's `data_device`), mounted at the data directory's parent before
//! PostgreSQL is installed.
//!
//! - The device is found by the volume id (Nitro instances show an EBS volume as an NVMe
//!   disk whose serial is the id without its dash, linked by udev under
//!   `/dev/disk/by-id`), else by the attachment's name (`/dev/sdf`, which Xen instances
//!   call `/dev/xvdf`).
//! - It is formatted (ext4) only when `blkid -p` finds nothing on it, and the format
//!   command checks that again on the host. A partition table or another filesystem is
//!   refused, naming the device and what is on it: pgform never formats a disk that
//!   holds anything.
//! - It is mounted by UUID from /etc/fstab (`noatime,nofail`: a missing disk must not stop
//!   the machine from booting, and PostgreSQL then finds no cluster rather than an empty
//!   one made on the root disk).
//! - The mount point's directory is root's, mode 755, as Debian's `pg_createcluster`
//!   leaves `/var/lib/postgresql/<major>` (it makes `main` inside, owned by postgres).
//! - A mount point that already holds files (PostgreSQL installed on the root disk before
//!   the volume was added) is refused with the fix: mounting over it would hide the data.

use serde::Deserialize;

use super::modules::{ActionError, Change, ok};
use crate::remote::{Connection, shell};

/// The filesystem pgform makes: ext4, because e2fsprogs is on every Debian image
/// (nothing to install before the disk is mounted) and it is Debian's default.
pub const FSTYPE: &str = "ext4";
/// Mount options: no access-time writes for a database, and a boot that goes on without
/// the disk.
pub const MOUNT_OPTIONS: &str = "defaults,noatime,nofail";

/// The module's arguments, rendered for one host.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataVolume {
    /// The EBS volume id (`vol-0abc...`), or empty.
    #[serde(default)]
    pub volume_id: String,
    /// The device name: the attachment's (`/dev/sdf`) or a listed host's disk.
    #[serde(default)]
    pub device: String,
    /// Where it is mounted: the data directory's parent.
    pub mount: String,
}

/// The devices to look for, in order.
pub fn candidates(volume_id: &str, device: &str) -> Vec<String> {
    let mut out = Vec::new();
    if !volume_id.is_empty() {
        out.push(format!(
            "/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_{}",
            volume_id.replace('-', "")
        ));
    }
    if !device.is_empty() {
        out.push(device.to_string());
        if let Some(rest) = device.strip_prefix("/dev/sd") {
            out.push(format!("/dev/xvd{rest}"));
        }
    }
    out
}

/// What the host said about the volume ([`shell::volume_probe`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Probe {
    /// The resolved device, empty when no candidate exists.
    pub device: String,
    pub fs_type: String,
    pub uuid: String,
    pub partition_table: String,
    /// What is mounted at the mount point (a device path), or empty.
    pub mounted: String,
    /// The fstab line for the mount point, or empty.
    pub fstab: String,
    /// The mount point holds files.
    pub occupied: bool,
}

impl Probe {
    pub fn parse(text: &str) -> Probe {
        let mut p = Probe::default();
        for line in text.lines() {
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            let v = v.trim().to_string();
            match k {
                "device" => p.device = v,
                "blkid_TYPE" => p.fs_type = v,
                "blkid_UUID" => p.uuid = v,
                "blkid_PTTYPE" => p.partition_table = v,
                "mounted" => p.mounted = v,
                "fstab" => p.fstab = v,
                "occupied" => p.occupied = v == "yes",
                _ => {}
            }
        }
        p
    }
}

/// The steps the volume needs, in order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Steps {
    pub format: bool,
    /// The fstab line is missing or differs.
    pub fstab: bool,
    pub mount: bool,
}

impl DataVolume {
    fn what(&self) -> String {
        if self.volume_id.is_empty() {
            format!("data device {}", self.device)
        } else {
            format!("data volume {}", self.volume_id)
        }
    }

    /// The fstab line for a filesystem with `uuid`.
    pub fn fstab_line(&self, uuid: &str) -> String {
        format!("UUID={uuid} {} {FSTYPE} {MOUNT_OPTIONS} 0 2", self.mount)
    }

    /// What needs doing, or why nothing may be done. Pure: tested below.
    pub fn decide(&self, p: &Probe) -> Result<Steps, ActionError> {
        let looked = candidates(&self.volume_id, &self.device).join(", ");
        if p.device.is_empty() {
            return Err(ActionError::Invalid(format!(
                "{} is not attached to this host: no block device at {looked}",
                self.what()
            )));
        }
        let dev = &p.device;
        if !p.partition_table.is_empty() {
            return Err(ActionError::Invalid(format!(
                "{} ({dev}) holds a {} partition table; pgform formats only an empty disk. \
                 Fix: use an empty volume, or wipe this one yourself if its data is not needed",
                self.what(),
                p.partition_table
            )));
        }
        if !p.fs_type.is_empty() && p.fs_type != FSTYPE {
            return Err(ActionError::Invalid(format!(
                "{} ({dev}) holds a {} filesystem, not {FSTYPE}; pgform never reformats a disk \
                 that holds data. Fix: use an empty volume, or wipe this one yourself if its \
                 data is not needed",
                self.what(),
                p.fs_type
            )));
        }
        let mounted_here = !p.mounted.is_empty() && p.mounted == *dev;
        if !p.mounted.is_empty() && !mounted_here {
            return Err(ActionError::Invalid(format!(
                "{} has {} mounted, not the {} ({dev}). Fix: unmount it and remove its \
                 /etc/fstab line",
                self.mount,
                p.mounted,
                self.what()
            )));
        }
        if !mounted_here && p.occupied {
            return Err(ActionError::Invalid(format!(
                "{} already holds files on the root disk (PostgreSQL installed before the {} \
                 was added?); mounting {dev} there would hide them. Fix: stop PostgreSQL, copy \
                 the directory onto the volume (mount it elsewhere, `cp -a`), empty {}, then \
                 apply again; or remove the volume from the spec to keep the data where it is",
                self.mount,
                self.what(),
                self.mount
            )));
        }
        let format = p.fs_type.is_empty();
        // Compared field by field: Ansible's mount module writes the same line with tabs.
        let fields = |l: &str| l.split_whitespace().map(str::to_string).collect::<Vec<_>>();
        let fstab = format || fields(&p.fstab) != fields(&self.fstab_line(&p.uuid));
        Ok(Steps {
            format,
            fstab,
            mount: !mounted_here,
        })
    }

    pub async fn query(&self, conn: &Connection) -> Result<Option<Change>, ActionError> {
        let probe = self.probe(conn).await?;
        let steps = self.decide(&probe)?;
        let mut parts = Vec::new();
        if steps.format {
            parts.push(format!("format {} as {FSTYPE}", probe.device));
        }
        if steps.fstab {
            parts.push("add its /etc/fstab line".to_string());
        }
        if steps.mount {
            parts.push(format!("mount it at {}", self.mount));
        }
        Ok((!parts.is_empty()).then(|| Change {
            summary: format!("{}: {}", self.what(), parts.join(", ")),
            diff: None,
            note_only: false,
        }))
    }

    pub async fn act(&self, conn: &Connection) -> Result<(), ActionError> {
        let probe = self.probe(conn).await?;
        let steps = self.decide(&probe)?;
        let dev = &probe.device;
        if steps.format {
            ok(
                conn.run(shell::format_empty_device(dev), None).await?,
                &format!("formatting {dev}"),
            )?;
        }
        let uuid = if steps.format {
            let out = ok(conn.run(shell::filesystem_uuid(dev), None).await?, "blkid")?;
            out.stdout.trim().to_string()
        } else {
            probe.uuid.clone()
        };
        if uuid.is_empty() {
            return Err(ActionError::Invalid(format!(
                "{dev} has no filesystem UUID"
            )));
        }
        if steps.format || steps.fstab {
            let fstab = ok(
                conn.run(shell::read_file("/etc/fstab"), None).await?,
                "reading /etc/fstab",
            )?;
            let text = fstab.stdout.split_once('\n').map(|x| x.1).unwrap_or("");
            let text = if fstab.stdout.starts_with("absent") {
                ""
            } else {
                text
            };
            let new = with_fstab_line(text, &self.mount, &self.fstab_line(&uuid));
            ok(
                conn.run(
                    shell::write_file("/etc/fstab", "root", "root", "644"),
                    Some(new.as_bytes()),
                )
                .await?,
                "writing /etc/fstab",
            )?;
        }
        if steps.mount {
            ok(
                conn.run(shell::mount_from_fstab(&self.mount), None).await?,
                &format!("mounting {dev} at {}", self.mount),
            )?;
        }
        Ok(())
    }

    async fn probe(&self, conn: &Connection) -> Result<Probe, ActionError> {
        let out = ok(
            conn.run(
                shell::volume_probe(&candidates(&self.volume_id, &self.device), &self.mount),
                None,
            )
            .await?,
            "probing the data volume",
        )?;
        Ok(Probe::parse(&out.stdout))
    }
}

/// /etc/fstab with `line` as the only entry for `mount` (other entries kept).
pub fn with_fstab_line(text: &str, mount: &str, line: &str) -> String {
    let mut out = String::new();
    for l in text.lines() {
        let fields: Vec<&str> = l.split_whitespace().collect();
        let ours = !l.trim_start().starts_with('#') && fields.get(1) == Some(&mount);
        if !ours {
            out.push_str(l);
            out.push('\n');
        }
    }
    out.push_str(line);
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vol() -> DataVolume {
        DataVolume {
            volume_id: "vol-0abc".into(),
            device: "/dev/sdf".into(),
            mount: "/var/lib/postgresql/15".into(),
        }
    }

    #[test]
    fn candidates_follow_ec2_naming() {
        assert_eq!(
            candidates("vol-0abc", "/dev/sdf"),
            [
                "/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol0abc",
                "/dev/sdf",
                "/dev/xvdf"
            ]
        );
        assert_eq!(candidates("", "/dev/vdb"), ["/dev/vdb"]);
    }

    #[test]
    fn an_empty_disk_is_formatted_mounted_and_listed() {
        let p = Probe::parse("device=/dev/nvme1n1\nmounted=\nfstab=\n");
        let s = vol().decide(&p).unwrap();
        assert_eq!(
            s,
            Steps {
                format: true,
                fstab: true,
                mount: true
            }
        );
    }

    #[test]
    fn a_mounted_listed_disk_is_left_alone() {
        let v = vol();
        let text = format!(
            "device=/dev/nvme1n1\nblkid_TYPE=ext4\nblkid_UUID=u-1\nmounted=/dev/nvme1n1\nfstab={}\noccupied=yes\n",
            v.fstab_line("u-1")
        );
        assert_eq!(v.decide(&Probe::parse(&text)).unwrap(), Steps::default());
        // After a reboot without fstab (a container): mounted again, not formatted.
        let text = format!(
            "device=/dev/nvme1n1\nblkid_TYPE=ext4\nblkid_UUID=u-1\nmounted=\nfstab={}\n",
            v.fstab_line("u-1")
        );
        let s = v.decide(&Probe::parse(&text)).unwrap();
        assert!(s.mount && !s.format && !s.fstab);
    }

    #[test]
    fn anything_on_the_disk_or_under_the_mount_point_is_refused() {
        let v = vol();
        for (probe, words) in [
            ("device=\n", vec!["not attached", "vol0abc", "/dev/xvdf"]),
            (
                "device=/dev/loop3\nblkid_PTTYPE=gpt\n",
                vec!["/dev/loop3", "gpt partition table"],
            ),
            (
                "device=/dev/loop3\nblkid_TYPE=xfs\nblkid_UUID=x\n",
                vec!["/dev/loop3", "xfs filesystem", "never reformats"],
            ),
            (
                "device=/dev/loop3\nmounted=/dev/sda1\n",
                vec!["/dev/sda1 mounted", "unmount"],
            ),
            (
                "device=/dev/loop3\noccupied=yes\n",
                vec!["root disk", "would hide", "Fix:"],
            ),
        ] {
            let err = v.decide(&Probe::parse(probe)).unwrap_err().to_string();
            for w in words {
                assert!(err.contains(w), "{probe:?}: {err}");
            }
        }
    }

    #[test]
    fn fstab_keeps_other_lines_and_replaces_ours() {
        let old = "# static\nUUID=root / ext4 defaults 0 1\nUUID=old /var/lib/postgresql/15 ext4 defaults 0 2\n";
        let new = with_fstab_line(
            old,
            "/var/lib/postgresql/15",
            "UUID=n /var/lib/postgresql/15 ext4 defaults,noatime,nofail 0 2",
        );
        assert_eq!(
            new,
            "# static\nUUID=root / ext4 defaults 0 1\nUUID=n /var/lib/postgresql/15 ext4 defaults,noatime,nofail 0 2\n"
        );
        assert_eq!(with_fstab_line("", "/m", "x /m"), "x /m\n");
    }
}
