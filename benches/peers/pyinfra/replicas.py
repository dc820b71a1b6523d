"""Part 3 of 4: the replicas, seeded from the primary and running (see deploy.py)."""

from pyinfra import host, inventory
from pyinfra.operations import server

primary = inventory.get_group("primary")[0]

# Declared on every host and skipped where it does not apply: pyinfra orders a step
# by the hosts it is declared on, so a step declared on some hosts only could run
# before another host's earlier one.
on_replicas = "replicas" in host.groups


def here() -> bool:
    return on_replicas


slot = host.name.replace("-", "_")
server.shell(
    _if=here,
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
    _if=here,
    name="Replica running",
    commands=["pg_ctlcluster 15 main status >/dev/null || pg_ctlcluster 15 main start"],
)
