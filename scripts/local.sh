#!/usr/bin/env bash
# The main job on the local default, no AWS account needed: a PostgreSQL primary and two
# streaming replicas on this machine, as Debian containers with sshd on a private Docker
# network (examples/local.toml). Installs and starts what it needs (Debian's docker.io,
# a host image built with debootstrap, a local apt repository: scripts/testbed.sh), then
# runs pgform plan, apply (infrastructure, then the task list over SSH, then the
# replication check), a converged plan and status. `bash scripts/local.sh destroy`
# removes the cluster.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD
spec=examples/local.toml
secrets=examples/.pgform # ignored by git

bash scripts/testbed.sh up
eval "$(bash scripts/testbed.sh env)"

echo "==> building pgform"
cargo build --quiet
pgform="$root/target/debug/pgform"

# A key for the containers and a replication password, made once and kept beside the
# example (mode 600). The password reaches pgform through its environment only.
mkdir -p "$secrets"
chmod 700 "$secrets"
[ -f "$secrets/id_ed25519" ] || ssh-keygen -q -t ed25519 -N "" -C pgform-local -f "$secrets/id_ed25519"
if [ ! -s "$secrets/replication-password" ]; then
    (umask 077 && python3 -c 'import secrets; print(secrets.token_urlsafe(24))' >"$secrets/replication-password")
fi
for user in app reporting; do
    if [ ! -s "$secrets/$user-password" ]; then
        (umask 077 && python3 -c 'import secrets; print(secrets.token_urlsafe(24))' >"$secrets/$user-password")
    fi
done
PGFORM_REPLICATION_PASSWORD=$(head -n 1 "$secrets/replication-password")
export PGFORM_REPLICATION_PASSWORD

step() { printf '\n\033[1m==> pgform %s\033[0m\n' "$*"; }
if [ "${1:-}" = destroy ]; then
    step destroy --auto-approve; "$pgform" -f "$spec" destroy --auto-approve
    exit 0
fi
step validate;                 "$pgform" -f "$spec" validate
step plan;                     "$pgform" -f "$spec" plan
step apply --auto-approve;     "$pgform" -f "$spec" apply --auto-approve
step plan --detailed-exitcode; "$pgform" -f "$spec" plan --detailed-exitcode && echo "(exit 0: converged)"
step status;                   "$pgform" -f "$spec" status
step output;                   "$pgform" -f "$spec" output

# Connect as the application does: its read-write URL, TLS checked against the
# cluster's CA (verify-full), the password from the environment.
url=$("$pgform" -f "$spec" output --json | python3 -c '
import json, sys
dbs = json.load(sys.stdin)["databases"]
print(next(d["read_write_url"] for d in dbs if d["user"] == "app"))')
printf '\n\033[1m==> psql as app over TLS (verify-full)\033[0m\n'
PGPASSWORD=$(head -n 1 "$secrets/app-password") psql "$url" -XAtc \
    "SELECT 'connected as ' || current_user || ', ssl ' || ssl || ', ' || version FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
cat <<TXT

The cluster runs: primary at 10.231.0.11, replicas at .12 and .13 (user replicator,
password in $secrets/replication-password; application users app and reporting, their
passwords beside it). Try:
  $pgform -f $spec status
  $pgform -f $spec output
  ssh -i $secrets/id_ed25519 root@10.231.0.11
  bash scripts/local.sh destroy
TXT
