"""The same lean replication deploy as ../ansible/site.yml, for pyinfra 3.10: the
baseline `cargo bench --bench peers` measures pgform against. Four files run in order:
this one (every host), primary.py, replicas.py, verify.py. Data (--data):
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


# A standby restarts only once seeded (replicas.py starts it after the seed).
server.shell(
    name="Restarted for its settings",
    commands=[
        "pg_ctlcluster 15 main restart"
        if is_primary
        else "test ! -e /var/lib/postgresql/15/main/standby.signal || pg_ctlcluster 15 main restart"
    ],
    _if=any_changed(settings, hba),
)
