"""Part 3 of 4: the replicas, seeded from the primary and running (see deploy.py)."""

from pyinfra import host, inventory
from pyinfra.operations import server

primary = inventory.get_group("primary")[0]

if "replicas" in host.groups:
    slot = host.name.replace("-", "_")
    server.shell(
        name="Seeded from the primary",
        commands=[
            "cd /tmp && test -e /var/lib/postgresql/15/main/standby.signal || { "
            "pg_ctlcluster 15 main stop 2>/dev/null; rm -rf /var/lib/postgresql/15/main && "
            "runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_basebackup "
            f"-h {primary.data.ssh_hostname} -U replicator "
            f"-D /var/lib/postgresql/15/main -R -X stream -S {slot} --checkpoint=fast -w; }}"
        ],
    )
    server.shell(
        name="Replica running",
        commands=["pg_ctlcluster 15 main status >/dev/null || pg_ctlcluster 15 main start"],
    )
