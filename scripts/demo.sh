#!/usr/bin/env bash
# The infrastructure layer on EC2, no AWS account needed: starts the EC2 emulator
# (moto server) on loopback, then runs pgform validate, plan, apply, a converged plan,
# output and destroy on examples/cluster.toml (--only infra: the emulated instances are
# not hosts anyone can reach). Leaves nothing running.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD

if ! command -v moto_server >/dev/null; then
    echo "==> installing the EC2 emulator (moto server)"
    PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --no-input 'moto[server]==5.2.1'
    PATH="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"
fi

echo "==> building pgform"
cargo build --quiet
pgform="$root/target/debug/pgform"

work=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
MOTO_AMIS_PATH="$root/tests/fixtures/amis.json" moto_server -H 127.0.0.1 -p "$port" >"$work/moto.log" 2>&1 &
moto=$!
trap 'kill $moto 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:$port/moto-api/" >/dev/null 2>&1 && break
    sleep 0.1
done

export AWS_ENDPOINT_URL="http://127.0.0.1:$port" AWS_ACCESS_KEY_ID=demo AWS_SECRET_ACCESS_KEY=demo
export AWS_EC2_METADATA_DISABLED=true PGFORM_REPLICATION_PASSWORD=demo-only-secret
cp examples/cluster.toml "$work/cluster.toml"
ssh-keygen -q -t ed25519 -N "" -C demo -f "$work/demo_key"
cd "$work"

step() { printf '\n\033[1m==> pgform %s\033[0m\n' "$*"; }
step validate;                      "$pgform" validate
step plan --only infra;              "$pgform" plan --only infra
step apply --only infra --auto-approve; "$pgform" apply --only infra --auto-approve
step plan --detailed-exitcode;      "$pgform" plan --only infra --detailed-exitcode && echo "(exit 0: converged)"
step state list;                    "$pgform" state list
step output;                        "$pgform" output
step destroy --auto-approve;        "$pgform" destroy --auto-approve
