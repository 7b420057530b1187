#!/usr/bin/env bash
# The project's virtualenv for the Makefile: made by a Python 3.11+ that is asked for, rebuilt when it
# is broken, older than 3.11, or made by another interpreter than an explicit PYTHON=.
#
#   scripts/venv.sh check  VENV PYTHON [given]   prints "rebuild" when an existing VENV must be rebuilt
#   scripts/venv.sh ensure VENV PYTHON [given]   makes VENV usable: one clear line and exit 1 if it cannot
#
# "given" means PYTHON came from the command line or the environment (not the Makefile's default): only
# then does a working .venv of another interpreter count as wrong.
set -uo pipefail

action=${1:?usage: venv.sh check|ensure VENV PYTHON [given]}
venv=${2:?venv directory}
python=${3:?python command}
given=${4:-}

# Same interpreter = same version string (build included) and same installation.
identity='import sys; print(sys.version.replace("\n", " "), sys.base_prefix, sep="|")'
new_enough='import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'

# Why an existing venv cannot stay, or nothing when it can (or when there is none yet).
stale_reason() {
    [ -e "$venv" ] || return 0
    if ! "$venv/bin/python" -c 'pass' >/dev/null 2>&1; then
        echo "its python does not run"
        return
    fi
    if ! "$venv/bin/python" -c "$new_enough" >/dev/null 2>&1; then
        echo "it was made by Python $("$venv/bin/python" -c 'import platform; print(platform.python_version())')"
        return
    fi
    if [ -n "$given" ]; then
        local mine theirs
        mine=$("$venv/bin/python" -c "$identity" 2>/dev/null)
        theirs=$("$python" -c "$identity" 2>/dev/null) || return  # ensure reports a missing PYTHON
        [ "$mine" = "$theirs" ] || echo "it was made by another interpreter than $python"
    fi
}

# One line saying what to do when PYTHON cannot make the venv; nothing when it can.
python_problem() {
    if ! command -v "$python" >/dev/null 2>&1; then
        echo "wxlogin needs Python 3.11 or newer, and '$python' is not installed.$(suggest)"
        return
    fi
    if ! "$python" -c "$new_enough" >/dev/null 2>&1; then
        local version
        version=$("$python" -c 'import platform; print(platform.python_version())' 2>/dev/null || echo unknown)
        echo "wxlogin needs Python 3.11 or newer, but $python is Python $version.$(suggest)"
        return
    fi
    if ! "$python" -c 'import ensurepip, venv' >/dev/null 2>&1; then
        local name
        name=$("$python" -c 'import sys; print(f"python{sys.version_info[0]}.{sys.version_info[1]}")')
        echo "$python cannot create a virtualenv: install ${name}-venv (apt install ${name}-venv) and run make again."
    fi
}

# A newer Python already on PATH, if any, as the command to use.
suggest() {
    local candidate
    for candidate in python3.13 python3.12 python3.11; do
        if [ "$candidate" != "$python" ] && command -v "$candidate" >/dev/null 2>&1 \
            && "$candidate" -c "$new_enough" >/dev/null 2>&1; then
            echo " Run make again with PYTHON=$candidate (e.g. make demo PYTHON=$candidate)."
            return
        fi
    done
    echo " Install Python 3.11+ (Ubuntu 22.04: apt install python3.11 python3.11-venv) and run make again with PYTHON=python3.11."
}

case "$action" in
    check)
        [ -z "$(stale_reason)" ] || echo rebuild
        ;;
    ensure)
        reason=$(stale_reason)
        if [ -z "$reason" ] && [ -e "$venv" ]; then
            exit 0
        fi
        problem=$(python_problem)
        if [ -n "$problem" ]; then
            echo "$problem" >&2
            exit 1
        fi
        if [ -n "$reason" ]; then
            echo "rebuilding $venv: $reason"
            rm -rf "$venv"
        fi
        "$python" -m venv "$venv" || exit 1
        ;;
    *)
        echo "usage: venv.sh check|ensure VENV PYTHON [given]" >&2
        exit 2
        ;;
esac
