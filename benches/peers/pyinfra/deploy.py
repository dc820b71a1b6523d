"""The same lean replication deploy as ../ansible/site.yml, for pyinfra 3.10: the
baseline `cargo bench --bench peers` measures pgform against. Data (--data):
apt_mirror, members_cidr, replication_password (given through the environment by the
bench: PEER_REPLICATION_PASSWORD). Hosts have no init system: pg_ctlcluster starts the
cluster.
"""

import os
from io import StringIO

from pyinfra import host, inventory
from pyinfra.operations import apt, files, server
from pyinfra.operations.util import any_changed

CONF = "/etc/postgresql/15/main"
password = os.environ["PEER_REPLICATION_PASSWORD"]
members = len(inventory)
replicas = inventory.get_group("replicas")
primary = inventory.get_group("primary")[0]
is_primary = "primary" in host.groups

files.put(
    name="Only the configured apt source",
    src=StringIO(host.data.apt_mirror + "\n"),
    dest="/etc/apt/sources.list.d/peer.list",
)
for path in ["/etc/apt/sources.list", "/etc/apt/sources.list.d/debian.sources"]:
    files.file(name=f"No {path}", path=path, present=False)
apt.packages(
    name="PostgreSQL installed",
    packages=["postgresql-15", "postgresql-client-15"],
    update=True,
    no_recommends=True,
)
settings = files.put(
    name="Replication settings",
    src=StringIO(
        "listen_addresses = '*'\n"
        "wal_level = replica\n"
        f"max_wal_senders = {max(members * 2 + 4, 10)}\n"
        f"max_replication_slots = {max(members + 4, 10)}\n"
        "hot_standby = on\n"
        f"cluster_name = '{host.name}'\n"
    ),
    dest=f"{CONF}/conf.d/peer.conf",
    user="postgres",
    group="postgres",
    mode="644",
)
hba = files.block(
    name="Members may replicate",
    path=f"{CONF}/pg_hba.conf",
    content=f"host replication replicator {host.data.members_cidr} scram-sha-256",
)
files.put(
    name="Replication password file",
    src=StringIO(f"*:*:*:replicator:{password}\n"),
    dest="/var/lib/postgresql/.pgpass",
    user="postgres",
    group="postgres",
    mode="600",
)

if is_primary:
    server.shell(
        name="Primary restarted for its settings",
        commands=["pg_ctlcluster 15 main restart"],
        _if=any_changed(settings, hba),
    )
    server.shell(
        name="Primary running",
        commands=["pg_ctlcluster 15 main status >/dev/null || pg_ctlcluster 15 main start"],
    )
    server.shell(
        name="Replication role",
        # The password from the environment (\getenv), never in an argument list.
        commands=[
            "cd /tmp && [ \"$(runuser -u postgres -- psql -XAtc \"SELECT 1 FROM pg_roles "
            "WHERE rolname = 'replicator'\")\" = 1 ] || printf '%s\\n' '\\getenv pw PW' "
            "\"CREATE ROLE replicator REPLICATION LOGIN PASSWORD :'pw';\" "
            "| runuser -u postgres -- psql -Xq -v ON_ERROR_STOP=1"
        ],
        _env={"PW": password},
    )
    slots = ",".join(r.name.replace("-", "_").replace(".", "_") for r in replicas)
    server.shell(
        name="Replication slots",
        commands=[
            "cd /tmp && runuser -u postgres -- psql -XAt -v ON_ERROR_STOP=1 -c "
            f"\"SELECT pg_create_physical_replication_slot(s, true) FROM "
            f"unnest(string_to_array('{slots}', ',')) s WHERE s NOT IN "
            f"(SELECT slot_name FROM pg_replication_slots)\""
        ],
    )
else:
    slot = host.name.replace("-", "_").replace(".", "_")
    server.shell(
        name="Seeded from the primary",
        commands=[
            "cd /tmp && test -e /var/lib/postgresql/15/main/standby.signal || { "
            "pg_ctlcluster 15 main stop 2>/dev/null; rm -rf /var/lib/postgresql/15/main && "
            "runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_basebackup "
            f"-h {primary.data.get('ssh_hostname') or primary.name} -U replicator "
            f"-D /var/lib/postgresql/15/main -R -X stream -S {slot} --checkpoint=fast -w; }}"
        ],
    )
    server.shell(
        name="Replica restarted for its settings",
        commands=["pg_ctlcluster 15 main restart"],
        _if=any_changed(settings, hba),
    )
    server.shell(
        name="Replica running",
        commands=["pg_ctlcluster 15 main status >/dev/null || pg_ctlcluster 15 main start"],
    )

if is_primary:
    server.shell(
        name="Every replica streams",
        commands=[
            "cd /tmp && for i in $(seq 60); do "
            "[ \"$(runuser -u postgres -- psql -XAtc \"SELECT count(*) FROM pg_stat_replication "
            f"WHERE state = 'streaming'\")\" = {len(replicas)} ] && exit 0; sleep 1; done; exit 1"
        ],
    )
