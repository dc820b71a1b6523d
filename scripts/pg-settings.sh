#!/usr/bin/env bash
# Regenerates pgform's settings catalog for a PostgreSQL major version,
# src/spec/params/<major>.tsv, from a real server's pg_settings, and its list of
# extensions, src/spec/params/<major>.extensions, from pg_available_extensions (with
# postgresql-contrib's, which Debian's postgresql-<major> depends on).
#
#   bash scripts/testbed.sh up          # once: docker daemon, host image, apt repository
#   bash scripts/pg-settings.sh 15      # writes src/spec/params/15.tsv
#
# It installs Debian's postgresql-<major> in a throw-away container of the testbed's host
# image (no network: the testbed's apt repository is mounted into it), starts the cluster
# that the package creates, and dumps pg_settings. Only majors that the repository holds
# can be generated (Debian 12 has 15); pgform says at validate what it cannot check for
# the others.
set -euo pipefail

readonly MAJOR="${1:?usage: bash scripts/pg-settings.sh MAJOR (e.g. 15)}"
readonly IMAGE=pgform-host:bookworm
readonly REPO_DIR=/var/cache/pgform/apt-repo
export DOCKER_HOST="${DOCKER_HOST:-unix:///run/pgform/docker.sock}"

cd "$(dirname "$0")/.."
readonly OUT="src/spec/params/$MAJOR.tsv"
readonly EXT_OUT="src/spec/params/$MAJOR.extensions"

[[ "$MAJOR" =~ ^[0-9]+$ ]] || { echo "pg-settings: MAJOR must be a number, e.g. 15" >&2; exit 2; }
docker image inspect "$IMAGE" >/dev/null 2>&1 ||
    { echo "pg-settings: no image $IMAGE; run bash scripts/testbed.sh up" >&2; exit 1; }
[[ -f "$REPO_DIR/Packages" ]] ||
    { echo "pg-settings: no apt repository in $REPO_DIR; run bash scripts/testbed.sh up" >&2; exit 1; }

# Columns: name, context, vartype, unit, min_val, max_val, enumvals (comma-separated);
# NULL is an empty field. Sorted bytewise so that a regeneration diffs cleanly.
readonly QUERY="SELECT name, context, vartype, coalesce(unit, ''), coalesce(min_val, ''),
  coalesce(max_val, ''), coalesce(array_to_string(enumvals, ','), '')
  FROM pg_settings ORDER BY name COLLATE \"C\""

tmp="$(mktemp)"
ext="$(mktemp)"
trap 'rm -f "$tmp" "$ext"' EXIT
docker run --rm --network none -v "$REPO_DIR:/repo:ro" -e MAJOR="$MAJOR" -e QUERY="$QUERY" \
    "$IMAGE" bash -euo pipefail -c '
        rm -f /etc/apt/sources.list.d/*
        echo "deb [trusted=yes] file:/repo ./" > /etc/apt/sources.list
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "postgresql-$MAJOR" >/dev/null 2>&1
        pg_ctlcluster "$MAJOR" main start
        q() { su postgres -c "psql -XAtq -F \"	\" -c \"\$1\"" -- - "$1"; }
        echo "# pg_settings of $(q "SELECT version()")"
        echo "# name	context	vartype	unit	min_val	max_val	enumvals"
        q "$QUERY"
        echo "#--- extensions"
        echo "# pg_available_extensions of $(q "SELECT version()")"
        q "SELECT name FROM pg_available_extensions ORDER BY name COLLATE \"C\""
    ' >"$tmp"
# The container writes both lists on stdout; the extensions follow a marker line.
sed -n '/^#--- extensions$/,$p' "$tmp" | tail -n +2 >"$ext"
sed -i '/^#--- extensions$/,$d' "$tmp"

# Enum values are joined with commas: make sure none contains one.
if awk -F'\t' '!/^#/ && NF != 7 { bad = 1 } END { exit !bad }' "$tmp"; then
    echo "pg-settings: unexpected output (not 7 columns):" >&2
    head -5 "$tmp" >&2
    exit 1
fi
mv "$tmp" "$OUT"
mv "$ext" "$EXT_OUT"
trap - EXIT
echo "pg-settings: wrote $OUT ($(grep -vc '^#' "$OUT") settings)"
echo "pg-settings: wrote $EXT_OUT ($(grep -vc '^#' "$EXT_OUT") extensions)"
