"""Part 2 of 4: the primary's role and slots (see deploy.py)."""

import os

from pyinfra import host, inventory
from pyinfra.operations import server

password = os.environ["PEER_REPLICATION_PASSWORD"]
replicas = inventory.get_group("replicas")

# Declared on every host and skipped where it does not apply: pyinfra orders a step
# by the hosts it is declared on, so a step declared on some hosts only could run
# before another host's earlier one.
on_primary = "primary" in host.groups


def here() -> bool:
    return on_primary


server.shell(
    _if=here,
    name="Primary running",
    commands=["pg_ctlcluster 15 main status >/dev/null || pg_ctlcluster 15 main start"],
)
server.shell(
    _if=here,
    name="Replication role",
    # The password from the environment (psql's \getenv), never in an argument list.
    commands=[
        "cd /tmp && [ \"$(runuser -u postgres -- psql -XAtc \"SELECT 1 FROM pg_roles "
        "WHERE rolname = 'replicator'\")\" = 1 ] || printf '%s\\n' '\\getenv pw PW' "
        "\"CREATE ROLE replicator REPLICATION LOGIN PASSWORD :'pw';\" "
        "| runuser -u postgres -- psql -Xq -v ON_ERROR_STOP=1"
    ],
    _env={"PW": password},
)
slots = ",".join(r.name.replace("-", "_") for r in replicas)
server.shell(
    _if=here,
    name="Replication slots",
    commands=[
        "cd /tmp && runuser -u postgres -- psql -XAt -v ON_ERROR_STOP=1 -c "
        "\"SELECT pg_create_physical_replication_slot(s, true) FROM "
        f"unnest(string_to_array('{slots}', ',')) s WHERE s NOT IN "
        "(SELECT slot_name FROM pg_replication_slots)\""
    ],
)
