"""Part 4 of 4: the primary sees every replica streaming (see deploy.py)."""

from pyinfra import host, inventory
from pyinfra.operations import server

replicas = inventory.get_group("replicas")

if "primary" in host.groups:
    server.shell(
        name="Every replica streams",
        commands=[
            "cd /tmp && for i in $(seq 60); do "
            "[ \"$(runuser -u postgres -- psql -XAtc \"SELECT count(*) FROM pg_stat_replication "
            f"WHERE state = 'streaming'\")\" = {len(replicas)} ] && exit 0; sleep 1; done; exit 1"
        ],
    )
