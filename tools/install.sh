#!/usr/bin/env bash
# Install edge-agent on a host (idempotent: safe to run again to upgrade).
#
#   sudo tools/install.sh [--dry-run]
#
# What it does
#   - system user/group edge-agent (member of dialout, video, audio)
#   - /etc/edge-agent (0750 root:edge-agent), /var/lib/edge-agent, /var/lib/edge-archive,
#     /var/lib/edge-monitor (0750 edge-agent:edge-agent)
#   - a venv at $EDGE_PREFIX/venv with this repository installed (pip, not editable)
#   - systemd units (services and the retention timer) copied to /etc/systemd/system (ExecStart rewritten if EDGE_PREFIX differs)
#   - `edge-agent --config /etc/edge-agent/agent.toml init` only if there is no config yet
#   - `systemctl daemon-reload` only if systemd is running (units are not enabled/started)
#
# Environment overrides
#   EDGE_ROOT=/tmp/x      install into a fake root (like DESTDIR); default /
#   EDGE_PREFIX=/opt/edge-agent   where the venv goes (path on the target system)
#   EDGE_PYTHON=python3   interpreter that creates the venv
#   EDGE_EXTRAS=audio     pip extras to install ("" for none; audio needs portaudio19-dev)
#   EDGE_PIP_ARGS=...     extra pip arguments (e.g. "--no-deps --no-build-isolation")
#   EDGE_INIT_ARGS=...    extra `edge-agent init` arguments (--device-id, --unit-code, --kind)
#   EDGE_SKIP_USER=1      do not create users/groups nor chown (tests, fake roots)
#   EDGE_SKIP_VENV=1      do not create/update the venv (use what is at $EDGE_PREFIX/venv)
#   EDGE_SKIP_INIT=1      do not write a config
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; }

DRY_RUN=0
for arg in "$@"; do
    case "$arg" in
        --dry-run|-n) DRY_RUN=1 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install.sh: unknown argument: $arg" >&2; usage >&2; exit 2 ;;
    esac
done

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ROOT="${EDGE_ROOT:-}"
ROOT="${ROOT%/}"                       # "" means the real /
PREFIX="${EDGE_PREFIX:-/opt/edge-agent}"
PYTHON="${EDGE_PYTHON:-python3}"
EXTRAS="${EDGE_EXTRAS-audio}"
USER_NAME=edge-agent
VENV="$ROOT$PREFIX/venv"
CONF_DIR="$ROOT/etc/edge-agent"
CONFIG="$CONF_DIR/agent.toml"
UNIT_DIR="$ROOT/etc/systemd/system"
DATA_DIRS=("$ROOT/var/lib/edge-agent" "$ROOT/var/lib/edge-archive" "$ROOT/var/lib/edge-monitor")

say() { printf 'install: %s\n' "$*"; }
run() {
    if [ "$DRY_RUN" = 1 ]; then
        printf '+ %s\n' "$*"
    else
        "$@"
    fi
}

manage_users=1
if [ "${EDGE_SKIP_USER:-0}" = 1 ]; then
    manage_users=0
elif [ "$(id -u)" != 0 ]; then
    if [ "$DRY_RUN" = 1 ]; then
        say "not root: user creation and chown shown but would need root"
    else
        echo "install.sh: must run as root (or set EDGE_SKIP_USER=1 with EDGE_ROOT=... for a fake root)" >&2
        exit 1
    fi
fi

# --- user and groups -----------------------------------------------------------------
if [ "$manage_users" = 1 ]; then
    for g in dialout video audio; do
        getent group "$g" >/dev/null || run groupadd --system "$g"
    done
    getent group "$USER_NAME" >/dev/null || run groupadd --system "$USER_NAME"
    if ! getent passwd "$USER_NAME" >/dev/null; then
        run useradd --system --gid "$USER_NAME" --groups dialout,video,audio \
            --home-dir /var/lib/edge-agent --no-create-home \
            --shell /usr/sbin/nologin --comment "edge-agent evidence pipeline" "$USER_NAME"
    else
        run usermod --append --groups dialout,video,audio "$USER_NAME"
    fi
else
    say "EDGE_SKIP_USER=1: not creating user $USER_NAME, not changing owners"
fi

# own PATH MODE OWNER:GROUP -- mkdir + chmod (+ chown when managing users)
own() {
    local path=$1 mode=$2 owner=$3
    run install -d -m "$mode" "$path"
    run chmod "$mode" "$path"
    if [ "$manage_users" = 1 ]; then run chown "$owner" "$path"; fi
}

# --- directories -----------------------------------------------------------------------
own "$CONF_DIR" 0750 "root:$USER_NAME"
for d in "${DATA_DIRS[@]}"; do
    own "$d" 0750 "$USER_NAME:$USER_NAME"
done

# --- venv ------------------------------------------------------------------------------
if [ "${EDGE_SKIP_VENV:-0}" = 1 ]; then
    say "EDGE_SKIP_VENV=1: leaving $VENV as it is"
else
    if [ ! -x "$VENV/bin/python" ]; then
        run install -d -m 0755 "$ROOT$PREFIX"
        say "creating venv $VENV"
        run "$PYTHON" -m venv "$VENV"
    fi
    spec="$REPO"
    [ -n "$EXTRAS" ] && spec="$REPO[$EXTRAS]"
    say "installing $spec into $VENV"
    # shellcheck disable=SC2086  # EDGE_PIP_ARGS is a word list on purpose
    run "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        ${EDGE_PIP_ARGS:-} "$spec"
fi

# --- systemd units ---------------------------------------------------------------------
run install -d -m 0755 "$UNIT_DIR"
for unit in "$REPO"/systemd/*.service "$REPO"/systemd/*.timer; do
    name=$(basename "$unit")
    if [ "$DRY_RUN" = 1 ]; then
        printf '+ install -m 0644 %s %s\n' "$unit" "$UNIT_DIR/$name"
        continue
    fi
    tmp=$(mktemp)
    sed "s#/opt/edge-agent/venv/#$PREFIX/venv/#g" "$unit" > "$tmp"
    if cmp -s "$tmp" "$UNIT_DIR/$name"; then
        rm -f "$tmp"
    else
        install -m 0644 "$tmp" "$UNIT_DIR/$name"
        rm -f "$tmp"
        say "installed $UNIT_DIR/$name"
    fi
done

# --- configuration (first install only) ------------------------------------------------
if [ -e "$CONFIG" ]; then
    say "keeping existing $CONFIG"
elif [ "${EDGE_SKIP_INIT:-0}" = 1 ]; then
    say "EDGE_SKIP_INIT=1: no config written; run: edge-agent --config /etc/edge-agent/agent.toml init"
elif [ ! -x "$VENV/bin/edge-agent" ] && [ "$DRY_RUN" = 0 ]; then
    echo "install.sh: $VENV/bin/edge-agent missing: cannot write $CONFIG" >&2
    exit 1
else
    # --config is the CLI group's option (edge-agent --config PATH init ...)
    # shellcheck disable=SC2086
    EDGE_AGENT_CONFIG="$CONFIG" run "$VENV/bin/edge-agent" --config "$CONFIG" init \
        --data-dir "$ROOT/var/lib/edge-agent" ${EDGE_INIT_ARGS:-}
    if [ "$DRY_RUN" = 0 ] && [ -e "$CONFIG" ]; then
        chmod 0640 "$CONFIG"
        if [ "$manage_users" = 1 ]; then
            chown "root:$USER_NAME" "$CONFIG"
            # init ran as root: the key pair and ledger it made belong to the service user
            chown -R "$USER_NAME:$USER_NAME" "$ROOT/var/lib/edge-agent"
        fi
    fi
fi

# --- systemd ---------------------------------------------------------------------------
if [ -z "$ROOT" ] && [ -d /run/systemd/system ]; then
    run systemctl daemon-reload
    say "done. Start with: systemctl enable --now edge-agent   (or edge-archive / edge-monitor;"
    say "      at the archive also the daily retention run: systemctl enable --now edge-archive-retention.timer)"
else
    say "done (systemd not running here or fake root: no daemon-reload)"
fi
