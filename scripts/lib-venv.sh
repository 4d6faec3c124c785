# shellcheck shell=bash
# Helpers shared by the scripts that ci-extra.sh runs, and by it; source
# it, do not run it.
#
#   tools_venv PKG==VER...   make sure the project-local venv has these pinned
#                            packages; sets TOOLS_VENV and TOOLS_BIN
#   proxy_binary debug|release
#                            print the path of a directline-proxy binary that
#                            is newer than the sources, building it if needed
#
# The venv lives in $TOOLS_VENV (default: <repo>/.venv-tools). It writes a
# .gitignore of "*" into it, so git never sees it whether or not the
# top-level .gitignore lists it. Installs are remembered per package (stamp
# files), so a re-run with everything present does not call pip at all.
#
# Environment:
#   TOOLS_VENV    where the venv lives (default <repo>/.venv-tools)
#   PYTHON        interpreter that creates the venv (default python3)
#   DIRECTLINE_PROXY_BIN   use this directline-proxy binary as is (no freshness check,
#                 no build)

REPO_ROOT="${REPO_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
TOOLS_VENV="${TOOLS_VENV:-$REPO_ROOT/.venv-tools}"
TOOLS_BIN="$TOOLS_VENV/bin"

tools_venv() {
  local python="${PYTHON:-python3}"
  if ! "$TOOLS_BIN/python" -c 'import sys' >/dev/null 2>&1; then
    echo "tools venv: creating $TOOLS_VENV" >&2
    rm -rf "$TOOLS_VENV"
    "$python" -m venv "$TOOLS_VENV" >&2 || {
      echo "error: cannot create a venv with $python (needs the venv module)" >&2
      return 1
    }
  fi
  [ -f "$TOOLS_VENV/.gitignore" ] || printf '# created by scripts/lib-venv.sh\n*\n' >"$TOOLS_VENV/.gitignore"
  mkdir -p "$TOOLS_VENV/.stamps"
  local missing=() req
  for req in "$@"; do
    [ -f "$TOOLS_VENV/.stamps/$req" ] || missing+=("$req")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "tools venv: installing ${missing[*]}" >&2
    "$TOOLS_BIN/python" -m pip install --quiet --disable-pip-version-check "${missing[@]}" >&2 || {
      echo "error: pip install ${missing[*]} failed" >&2
      return 1
    }
    for req in "${missing[@]}"; do
      touch "$TOOLS_VENV/.stamps/$req"
    done
  fi
}

# True when $1 exists and no source file is newer than it.
_fresh_binary() {
  local bin=$1
  [ -x "$bin" ] || return 1
  local newer
  newer=$(cd "$REPO_ROOT" && find src Cargo.toml Cargo.lock -newer "$bin" -print -quit 2>/dev/null)
  [ -z "$newer" ]
}

proxy_binary() {
  local profile=${1:-release}
  if [ -n "${DIRECTLINE_PROXY_BIN:-}" ]; then
    if [ ! -x "$DIRECTLINE_PROXY_BIN" ]; then
      echo "error: DIRECTLINE_PROXY_BIN=$DIRECTLINE_PROXY_BIN is not an executable" >&2
      return 1
    fi
    echo "$DIRECTLINE_PROXY_BIN"
    return 0
  fi
  local target="${CARGO_TARGET_DIR:-$REPO_ROOT/target}"
  case "$target" in /*) ;; *) target="$REPO_ROOT/$target" ;; esac
  local release="$target/release/directline-proxy" debug="$target/debug/directline-proxy"
  # A fresh release binary serves every purpose; a debug one only when asked for.
  if _fresh_binary "$release"; then
    echo "$release"
    return 0
  fi
  if [ "$profile" = debug ] && _fresh_binary "$debug"; then
    echo "$debug"
    return 0
  fi
  local args=(build --bin directline-proxy)
  [ "$profile" = release ] && args+=(--release)
  echo "building directline-proxy ($profile): cargo ${args[*]}" >&2
  (cd "$REPO_ROOT" && cargo "${args[@]}" >&2) || {
    echo "error: cargo ${args[*]} failed" >&2
    return 1
  }
  if [ "$profile" = release ]; then echo "$release"; else echo "$debug"; fi
}
