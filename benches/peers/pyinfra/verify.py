"""Part 4 of 4: the primary sees every replica streaming (see deploy.py)."""

from pyinfra import host, inventory
from pyinfra.operations import server

replicas = inventory.get_group("replicas")

# Declared on every host and skipped where it does not apply: pyinfra orders a step
# by the hosts it is declared on, so a step declared on some hosts only could run
# before another host's earlier one.
on_primary = "primary" in host.groups


def here() -> bool:
    return on_primary


server.shell(
    _if=here,
    name="Every replica streams",
    commands=[
        "cd /tmp && for i in $(seq 60); do "
        "[ \"$(runuser -u postgres -- psql -XAtc \"SELECT count(*) FROM pg_stat_replication "
        f"WHERE state = 'streaming'\")\" = {len(replicas)} ] && exit 0; sleep 1; done; exit 1"
    ],
)
