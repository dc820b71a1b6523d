#!/usr/bin/env bash
# Host testbed: what the host tests (tests/common/hosts.rs) need on this machine.
#
#   bash scripts/testbed.sh up              # install, dockerd, image, repo, serve
#   eval "$(bash scripts/testbed.sh env)"   # DOCKER_HOST, PGFORM_APT_PORT for the tests
#   bash scripts/testbed.sh down            # stop the daemons (image and repo stay)
#
# Every subcommand is idempotent: a rerun checks what exists and does only what is
# missing, so `up` is cheap once the testbed is there.
#
# Why it looks the way it does (Debian 12, root, no internet but the package registries):
# - No image can be pulled, so the host image is built from Debian's packages with
#   debootstrap and `docker import`.
# - Containers cannot reach the package registry either, so PostgreSQL reaches them from
#   a local apt repository served over HTTP on this machine; containers see it at their
#   network's gateway address (x.y.z.1).
# - The machine has no init system to run dockerd, so it is started by hand with its own
#   socket, data root and pid file under /run/pgform and /var/lib/pgform, out of the way
#   of any other docker daemon. `--bridge none --iptables=false`: there is no iptables
#   here; tests use user-defined bridge networks, whose bridges the host reaches directly.
set -euo pipefail

readonly RUN_DIR=/run/pgform
readonly DOCKER_SOCK="unix://$RUN_DIR/docker.sock"
readonly DOCKER_DATA=/var/lib/pgform/docker
readonly DOCKER_EXEC="$RUN_DIR/docker-exec"
readonly DOCKER_PID="$RUN_DIR/docker.pid"
readonly DOCKER_LOG=/var/log/pgform-dockerd.log

readonly IMAGE=pgform-host:bookworm
readonly SUITE=bookworm
# openssh-server: pgform configures hosts over SSH. sudo: for non-root remote users.
# python3, python3-apt: the Ansible export mode's apt module needs them on the host.
# iproute2, procps: `ip`, `ps`, `pkill` for tests and debugging. ca-certificates: like a
# real host. No `locales`: C.UTF-8 comes with libc, and /etc/default/locale selects it.
readonly IMAGE_PACKAGES=openssh-server,sudo,python3,python3-apt,iproute2,procps,ca-certificates
# The same host with systemd as PID 1, as cloud images boot: units, the boot's
# generators and `systemctl` are what pgform meets there. Its containers need
# `--cap-add SYS_ADMIN --security-opt seccomp=unconfined --cgroupns=host
# -v /sys/fs/cgroup:/sys/fs/cgroup --tmpfs /run --tmpfs /run/lock` (tests/common/hosts.rs).
readonly SYSTEMD_IMAGE=pgform-host-systemd:bookworm
readonly SYSTEMD_PACKAGES="$IMAGE_PACKAGES,systemd,systemd-sysv,dbus"

readonly REPO_DIR=/var/cache/pgform/apt-repo
# What hosts install from the local repository (with all their dependencies).
# python3-psycopg2 and acl: Ansible's postgresql modules and become_user need them.
# patroni, etcd-server, etcd-client, python3-etcd: the HA mode (`[ha] mode = "patroni"`).
readonly REPO_PACKAGES="postgresql-15 postgresql-client-15 python3-psycopg2 acl patroni etcd-server etcd-client python3-etcd"

APT_PORT="${PGFORM_APT_PORT:-8765}"
readonly APT_PORT
readonly HTTP_PID="$RUN_DIR/apt-http.pid"
readonly HTTP_LOG=/var/log/pgform-apt-http.log

# util-linux (losetup) and e2fsprogs (mkfs.ext2, debugfs): the data-disk tests attach a
# loop device to a container host as its EBS disk. (The host image has both from
# debootstrap's minbase: blkid, findmnt, mount, mkfs.ext4.) postgresql-client-15: the
# tests connect from this machine as applications do (TLS with verify-full).
# postgresql-15: the PostgreSQL store's tests start a throwaway server of their own
# (tests/common/pg.rs); Debian's own `main` cluster is not wanted (see cmd_install).
readonly HOST_PACKAGES="docker.io debootstrap dpkg-dev openssh-client util-linux e2fsprogs postgresql-client-15 postgresql-15"

usage() {
    cat <<EOF
Usage: bash scripts/testbed.sh COMMAND

Sets up what the host tests need: a docker daemon, the host image, a local apt
repository with PostgreSQL and an HTTP server for it. Every command is idempotent.

Commands:
  install   apt-get install $HOST_PACKAGES (when missing)
  dockerd   start dockerd on $DOCKER_SOCK (unless it answers)
  image     build the images $IMAGE and $SYSTEMD_IMAGE with debootstrap
            (unless they exist)
  repo      build the apt repository $REPO_DIR (unless up to date)
  serve     serve $REPO_DIR on 0.0.0.0:$APT_PORT (unless it answers)
  up        all of the above, in that order, with timings
  env       print the exports for the tests: eval "\$(bash scripts/testbed.sh env)"
  down      stop the HTTP server and dockerd (image and repository stay on disk)
  --help    this text

Environment: PGFORM_APT_PORT (default 8765) is the HTTP server's port.
EOF
}

log() {
    printf 'testbed: %s\n' "$*" >&2
}

die() {
    printf 'testbed: error: %s\n' "$*" >&2
    exit 1
}

need_root() {
    [[ $EUID -eq 0 ]] || die "must run as root (apt-get, dockerd, debootstrap)"
}

# `docker` is whichever CLI is first on PATH: Debian's /usr/bin/docker (20.10) or a newer
# one in /usr/local/bin; both negotiate the API version down to the daemon's (1.41).
dkr() {
    docker -H "$DOCKER_SOCK" "$@"
}

# The first mirror in the machine's own apt sources. Read at run time on purpose: no
# registry host is written into this repository.
apt_mirror() {
    local uri=""
    if [[ -r /etc/apt/sources.list.d/debian.sources ]]; then
        uri="$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources)"
    fi
    if [[ -z "$uri" && -r /etc/apt/sources.list ]]; then
        uri="$(awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; exit } }' \
            /etc/apt/sources.list)"
    fi
    [[ -n "$uri" ]] || die "no Debian mirror found in /etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list"
    printf '%s\n' "$uri"
}

# apt-get update only when apt does not know these packages yet (fresh machine, empty
# lists): an update costs several seconds and needs the registry.
apt_lists_know() {
    local pkg
    for pkg in "$@"; do
        apt-cache show "$pkg" >/dev/null 2>&1 || return 1
    done
}

ensure_apt_lists() {
    if ! apt_lists_know "$@"; then
        log "apt-get update"
        apt-get update -qq || die "apt-get update failed"
        apt_lists_know "$@" || die "apt does not know all of: $*"
    fi
}

cmd_install() {
    need_root
    local pkg missing=()
    for pkg in $HOST_PACKAGES; do
        if [[ "$(dpkg-query -W -f '${db:Status-Status}' "$pkg" 2>/dev/null)" != installed ]]; then
            missing+=("$pkg")
        fi
    done
    if [[ ${#missing[@]} -eq 0 ]]; then
        log "install: all present ($HOST_PACKAGES)"
        return
    fi
    ensure_apt_lists "${missing[@]}"
    # Installing the server must not create and start a `main` cluster on this machine:
    # the tests run servers of their own.
    local conf=/etc/postgresql-common/createcluster.conf
    if ! grep -qx 'create_main_cluster = false' "$conf" 2>/dev/null; then
        mkdir -p "$(dirname "$conf")"
        [[ -e "$conf" ]] && sed -i '/^[#[:space:]]*create_main_cluster/d' "$conf"
        printf 'create_main_cluster = false\n' >>"$conf"
    fi
    log "install: apt-get install ${missing[*]}"
    if ! apt_install "${missing[@]}"; then
        # Lists older than the mirror name versions it no longer has: refresh, retry once.
        log "install: failed; apt-get update and retry"
        apt-get update -qq || die "apt-get update failed"
        apt_install "${missing[@]}" || die "apt-get install ${missing[*]} failed"
    fi
}

apt_install() {
    # confold: keep a config file written before its package (createcluster.conf).
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$@" >/dev/null
}

docker_answers() {
    dkr version >/dev/null 2>&1
}

cmd_dockerd() {
    need_root
    if docker_answers; then
        log "dockerd: already answering on $DOCKER_SOCK"
        return
    fi
    command -v dockerd >/dev/null || die "dockerd not found: run 'bash scripts/testbed.sh install'"
    mkdir -p "$RUN_DIR" "$DOCKER_DATA" "$DOCKER_EXEC"
    # A daemon that is running but not answering (still starting, or wedged) must not get
    # a twin on the same data root: wait for it instead, then give up with its log.
    local pid=""
    [[ -s "$DOCKER_PID" ]] && pid="$(cat "$DOCKER_PID")"
    if [[ -n "$pid" ]] && is_our_process "$pid" dockerd; then
        log "dockerd: pid $pid exists but does not answer yet; waiting"
    else
        log "dockerd: starting (log: $DOCKER_LOG)"
        # setsid + nohup: the daemon outlives this script and its terminal or CI step.
        setsid nohup dockerd \
            --host "$DOCKER_SOCK" \
            --data-root "$DOCKER_DATA" \
            --exec-root "$DOCKER_EXEC" \
            --pidfile "$DOCKER_PID" \
            --bridge none \
            --iptables=false \
            </dev/null >>"$DOCKER_LOG" 2>&1 &
        pid=$!
    fi
    local i
    for ((i = 0; i < 60; i++)); do
        docker_answers && {
            log "dockerd: answering ($(dkr version --format '{{.Server.Version}}'))"
            return
        }
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.5
    done
    tail -n 30 "$DOCKER_LOG" >&2 || true
    die "dockerd did not answer on $DOCKER_SOCK within 30 s (log above: $DOCKER_LOG)"
}

# True when PID is alive and its command is NAME: a pid file can outlive its process and
# the pid be reused by something else, which must never be killed.
is_our_process() {
    local pid="$1" name="$2"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    [[ -r "/proc/$pid/cmdline" ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$name"
}

require_docker() {
    docker_answers || die "dockerd does not answer on $DOCKER_SOCK: run 'bash scripts/testbed.sh dockerd'"
}

# The init the image runs as PID 1 (baked in as /usr/local/sbin/pgform-host-init):
# `sshd` runs sshd in the foreground; `systemd` hands over to systemd, whose ssh.service
# starts sshd.
host_init_script() {
    local what='sshd in the foreground' then='exec /usr/sbin/sshd -D -e'
    if [[ "$1" == systemd ]]; then
        what='systemd as PID 1'
        then='exec /lib/systemd/systemd'
    fi
    cat <<EOF
#!/bin/sh
# pgform test host: $what, root's key from \$SSH_AUTHORIZED_KEYS.
# Written by pgform's scripts/testbed.sh.
set -eu
mkdir -p /run/sshd
# Host keys are made on the first start of each container (the image has none), so
# every host has its own and keeps it across docker stop/start.
ssh-keygen -A >/dev/null
if [ -n "\${SSH_AUTHORIZED_KEYS:-}" ]; then
    mkdir -p /root/.ssh
    chmod 700 /root/.ssh
    printf '%s\n' "\$SSH_AUTHORIZED_KEYS" >/root/.ssh/authorized_keys
    chmod 600 /root/.ssh/authorized_keys
fi
$then
EOF
}

# What the image is made of: a change to it rebuilds the image.
# Arguments: packages, init (see host_init_script).
image_recipe_id() {
    { echo "$SUITE $1"; host_init_script "$2"; } | sha256sum | cut -c1-16
}

# Unmounts whatever debootstrap left mounted under ROOTFS (it mounts /proc and /sys in
# the chroot and may leave them when it fails), then deletes ROOTFS without crossing
# into any other file system.
remove_rootfs() {
    local rootfs="$1" mnt
    [[ -d "$rootfs" ]] || return 0
    while read -r mnt; do
        umount -l "$mnt" 2>/dev/null || true
    done < <(awk -v r="$rootfs" '$2 == r || index($2, r "/") == 1 { print $2 }' /proc/mounts | sort -r)
    rm -rf --one-file-system "$rootfs"
}

cmd_image() {
    need_root
    require_docker
    build_image "$IMAGE" "$IMAGE_PACKAGES" sshd
    build_image "$SYSTEMD_IMAGE" "$SYSTEMD_PACKAGES" systemd
}

# Builds image NAME from debootstrap's minbase with PACKAGES (comma-separated) and the
# INIT of host_init_script, unless NAME exists from the same recipe.
build_image() {
    local image="$1" packages="$2" init="$3"
    local recipe have
    recipe="$(image_recipe_id "$packages" "$init")"
    if have="$(dkr image inspect --format '{{index .Config.Labels "pgform.recipe"}}' "$image" 2>/dev/null)"; then
        if [[ "$have" == "$recipe" ]]; then
            log "image: $image exists"
            return
        fi
        log "image: $image was built from another recipe ($have); rebuilding"
    fi
    command -v debootstrap >/dev/null || die "debootstrap not found: run 'bash scripts/testbed.sh install'"
    local mirror rootfs
    mirror="$(apt_mirror)"
    mkdir -p /var/lib/pgform
    rootfs="$(mktemp -d /var/lib/pgform/rootfs.XXXXXX)"
    # shellcheck disable=SC2064  # expand $rootfs now: it is local to this function
    trap "remove_rootfs '$rootfs'" EXIT
    log "image: $image: debootstrap $SUITE from $mirror (about a minute)"
    if ! debootstrap --variant=minbase --include="$packages" "$SUITE" "$rootfs" "$mirror" \
        >"$rootfs.log" 2>&1; then
        tail -n 30 "$rootfs.log" >&2 || true
        die "debootstrap failed (log: $rootfs.log)"
    fi
    rm -f "$rootfs.log"
    host_init_script "$init" >"$rootfs/usr/local/sbin/pgform-host-init"
    chmod 755 "$rootfs/usr/local/sbin/pgform-host-init"
    # debootstrap's openssh-server made host keys: drop them so that each container makes
    # its own (the init runs ssh-keygen -A).
    rm -f "$rootfs"/etc/ssh/ssh_host_*
    # Login shells (sshd through PAM's pam_env) get a UTF-8 locale like a cloud image's;
    # without it initdb would make SQL_ASCII databases.
    echo 'LANG=C.UTF-8' >"$rootfs/etc/default/locale"
    # The apt sources stay as debootstrap wrote them, like a real host's: tests that
    # install packages point the host at the local repository instead.
    # Don't keep the downloaded .debs: they only make the image bigger.
    rm -f "$rootfs"/var/cache/apt/archives/*.deb
    log "image: $image: docker import"
    local id
    # Import untagged and tag only when tar and import both succeeded (pipefail), so an
    # interrupted build never leaves a half image under the real name.
    id="$(tar -C "$rootfs" --numeric-owner -c . | dkr import \
        --change 'CMD ["/usr/local/sbin/pgform-host-init"]' \
        --change 'ENV LANG=C.UTF-8' \
        --change "LABEL pgform.recipe=$recipe" \
        - )" || die "docker import failed"
    dkr tag "$id" "$image"
    remove_rootfs "$rootfs"
    trap - EXIT
    log "image: built $image ($(dkr image inspect --format '{{.Size}}' "$image" | awk '{ printf "%d MB", $1 / 1e6 }'))"
}

# The packages in the repository: the dependency closure of REPO_PACKAGES. All
# alternatives of each dependency are included, which is what makes apt on the host find
# a solution whatever it picks.
repo_closure() {
    # shellcheck disable=SC2086  # REPO_PACKAGES is a list of words
    apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts \
        --no-breaks --no-replaces --no-enhances $REPO_PACKAGES |
        grep '^\w' | sort -u
}

# Downloads PKGS into DIR, each in the newest version that a mirror has. Not plain
# `apt-get download PKG`: that wants apt's candidate, which is the installed version when
# the machine has a newer one than its apt lists know (seen here: libpcre2-8-0
# 10.42-1+deb12u1 installed, only 10.42-1 in the lists), and no mirror serves that.
repo_download() {
    local dir="$1" specs
    shift
    # madison lists only versions from apt sources, newest first for each package.
    mapfile -t specs < <(apt-cache madison "$@" | awk -F' *[|] *' '{ gsub(/ /, "", $1) } !seen[$1]++ { print $1 "=" $2 }')
    [[ ${#specs[@]} -eq $# ]] || {
        log "repo: no mirror has some of: $*"
        return 1
    }
    # Sandbox user root: apt's _apt user cannot write into a root-owned mktemp folder.
    (cd "$dir" && apt-get download -qq -o APT::Sandbox::User=root "${specs[@]}")
}

cmd_repo() {
    need_root
    command -v dpkg-scanpackages >/dev/null || die "dpkg-scanpackages not found: run 'bash scripts/testbed.sh install'"
    local stamp="$REPO_DIR/.pgform-packages"
    if [[ -s "$REPO_DIR/Packages" && -s "$REPO_DIR/Packages.gz" && -f "$stamp" &&
        "$(cat "$stamp")" == "$REPO_PACKAGES" ]]; then
        local debs=("$REPO_DIR"/*.deb)
        log "repo: $REPO_DIR is up to date (${#debs[@]} packages)"
        return
    fi
    # shellcheck disable=SC2086
    ensure_apt_lists $REPO_PACKAGES
    local work
    mkdir -p "$(dirname "$REPO_DIR")"
    work="$(mktemp -d "$REPO_DIR.new.XXXXXX")"
    # shellcheck disable=SC2064
    trap "rm -rf '$work'" EXIT
    local pkgs
    mapfile -t pkgs < <(repo_closure)
    [[ ${#pkgs[@]} -gt 0 ]] || die "apt-cache depends found no packages for: $REPO_PACKAGES"
    log "repo: downloading ${#pkgs[@]} packages"
    if ! repo_download "$work" "${pkgs[@]}"; then
        # The machine's apt lists may be older than the mirror, which drops superseded
        # versions: refresh them once and try again.
        log "repo: download failed; apt-get update and retry"
        apt-get update -qq || die "apt-get update failed"
        mapfile -t pkgs < <(repo_closure)
        repo_download "$work" "${pkgs[@]}" || die "apt-get download failed"
    fi
    (cd "$work" && dpkg-scanpackages -m . /dev/null >Packages 2>/dev/null) ||
        die "dpkg-scanpackages failed"
    gzip -9c "$work/Packages" >"$work/Packages.gz"
    printf '%s' "$REPO_PACKAGES" >"$work/.pgform-packages"
    chmod 755 "$work"
    # Swap the new folder in; the HTTP server serves the path, so it picks it up.
    rm -rf "$REPO_DIR"
    mv "$work" "$REPO_DIR"
    trap - EXIT
    log "repo: $REPO_DIR ready ($(du -sm "$REPO_DIR" | cut -f1) MB)"
}

repo_answers() {
    python3 - "$APT_PORT" <<'EOF' 2>/dev/null
import sys, urllib.request
url = f"http://127.0.0.1:{sys.argv[1]}/Packages"
with urllib.request.urlopen(url, timeout=3) as r:
    sys.exit(0 if r.status == 200 and r.read(8) == b"Package:" else 1)
EOF
}

cmd_serve() {
    need_root
    [[ -s "$REPO_DIR/Packages" ]] || die "$REPO_DIR/Packages is missing: run 'bash scripts/testbed.sh repo'"
    if repo_answers; then
        log "serve: already serving on port $APT_PORT"
        return
    fi
    mkdir -p "$RUN_DIR"
    # --directory rather than cwd: `repo` may replace the folder while it is served.
    setsid nohup python3 -m http.server "$APT_PORT" --bind 0.0.0.0 --directory "$REPO_DIR" \
        </dev/null >>"$HTTP_LOG" 2>&1 &
    local pid=$!
    echo "$pid" >"$HTTP_PID"
    local i
    for ((i = 0; i < 50; i++)); do
        if repo_answers; then
            log "serve: http://0.0.0.0:$APT_PORT/ (pid $pid, log: $HTTP_LOG)"
            return
        fi
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.2
    done
    tail -n 20 "$HTTP_LOG" >&2 || true
    die "the HTTP server did not answer on port $APT_PORT (log above: $HTTP_LOG)"
}

cmd_up() {
    local step start total_start=$SECONDS
    for step in install dockerd image repo serve; do
        start=$SECONDS
        "cmd_$step"
        log "$step took $((SECONDS - start)) s"
    done
    log "up: ready in $((SECONDS - total_start)) s"
}

cmd_env() {
    echo "export DOCKER_HOST=$DOCKER_SOCK"
    echo "export PGFORM_APT_PORT=$APT_PORT"
}

# Sends TERM to the process in PIDFILE if it is NAME, and waits up to SECS for it to end.
stop_pidfile() {
    local pidfile="$1" name="$2" secs="$3" pid i
    [[ -s "$pidfile" ]] || {
        log "down: $name is not running (no $pidfile)"
        return
    }
    pid="$(cat "$pidfile")"
    if ! is_our_process "$pid" "$name"; then
        log "down: $name is not running (stale $pidfile)"
        rm -f "$pidfile"
        return
    fi
    kill -TERM "$pid"
    for ((i = 0; i < secs * 5; i++)); do
        kill -0 "$pid" 2>/dev/null || {
            rm -f "$pidfile"
            log "down: stopped $name (pid $pid)"
            return
        }
        sleep 0.2
    done
    die "$name (pid $pid) did not stop within $secs s"
}

cmd_down() {
    need_root
    stop_pidfile "$HTTP_PID" http.server 10
    # dockerd stops its containers first (up to their stop timeout of 10 s).
    stop_pidfile "$DOCKER_PID" dockerd 60
}

main() {
    [[ $# -eq 1 ]] || {
        usage >&2
        exit 2
    }
    case "$1" in
    install | dockerd | image | repo | serve | up | env | down) "cmd_$1" ;;
    -h | --help | help) usage ;;
    *)
        usage >&2
        die "unknown command: $1"
        ;;
    esac
}

main "$@"
