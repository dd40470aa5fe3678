#!/usr/bin/env bash
# Creates the virtual environment .venv at the repository root and installs requirements.txt into
# it, with the torch build for this machine. `make install`, `make demo` and `make test` call it.
#
#   tools/setup_env.sh               install what is missing (a quick check when nothing is)
#   tools/setup_env.sh --print-plan  print the commands it would run on this machine, run nothing
#
# Settings (environment variables):
#   TORCH_BUILD=auto|cpu|cuda  auto (default): cuda where `nvidia-smi` runs, cpu elsewhere
#   CPU_TORCH="torch==2.13.0"  what the CPU plan asks pip for first (e.g. add
#                              "--index-url <PyTorch's CPU index>" where pip would take a CUDA build)
#   CUDA_TORCH="torch==2.13.0" what the CUDA plan asks pip for first: the version CI tests on the CPU, so a
#                              GPU runs the code that was tested (for an older driver add PyTorch's index of
#                              an older CUDA, e.g. "--index-url https://download.pytorch.org/whl/cu126")
#   PYTHON=python3             the interpreter that creates .venv
set -euo pipefail
shopt -s inherit_errexit 2>/dev/null || true  # a failure inside $(...) stops the script too (bash >= 4.4)
# The repository root, found without dirname: --print-plan runs on bash's builtins alone, with no PATH.
here="${BASH_SOURCE[0]%/*}"
[[ $here == "${BASH_SOURCE[0]}" ]] && here=.
cd "$here/.."

PYTHON="${PYTHON:-python3}"
TORCH_BUILD="${TORCH_BUILD:-auto}"
TESTED_TORCH="torch==2.13.0"  # the torch CI tests (its CPU build); GPU set-ups get the same version
CPU_TORCH="${CPU_TORCH:-$TESTED_TORCH}"  # on this kind of machine a local CPU wheel
CUDA_TORCH="${CUDA_TORCH:-$TESTED_TORCH}"
VENV=.venv
STAMP="$VENV/.setup_env.stamp"
# Declares timm, whose torchvision does not import beside the CPU torch; the project imports neither.
NO_DEPS_PACKAGE=dynamic_network_architectures

# cpu or cuda: the CUDA build only where an NVIDIA driver answers.
torch_build() {
    case "$TORCH_BUILD" in
        cpu | cuda) echo "$TORCH_BUILD" ;;
        auto) if command -v nvidia-smi >/dev/null && nvidia-smi >/dev/null 2>&1; then echo cuda; else echo cpu; fi ;;
        *) echo "TORCH_BUILD=$TORCH_BUILD: expected auto, cpu or cuda" >&2; return 2 ;;
    esac
}

# The line of requirements.txt that names NO_DEPS_PACKAGE, e.g. dynamic_network_architectures>=0.4.
no_deps_requirement() {
    local line
    while IFS= read -r line || [[ -n $line ]]; do
        if [[ $line == "$NO_DEPS_PACKAGE"* ]]; then echo "${line%%#*}"; return; fi
    done < requirements.txt
    echo "requirements.txt names no $NO_DEPS_PACKAGE" >&2
    return 1
}

# The shell commands that set up .venv, one a line: what --print-plan prints and what an install runs.
plan() {
    local build no_deps
    build="$(torch_build)"
    echo "$PYTHON -m venv $VENV"
    if [[ $build == cuda ]]; then
        # pinned first: `torch>=2.1` alone would take the newest wheel, untested here and perhaps too new
        # for the driver
        echo "$VENV/bin/python -m pip install $CUDA_TORCH"
        echo "$VENV/bin/python -m pip install -r requirements.txt"
    else
        no_deps="$(no_deps_requirement)"
        # The CPU wheel first: with no torch installed, `torch>=2.1` would pull a CUDA build (GBs).
        echo "$VENV/bin/python -m pip install $CPU_TORCH"
        echo "grep -v '^$NO_DEPS_PACKAGE' requirements.txt > $VENV/requirements-cpu.txt"
        echo "$VENV/bin/python -m pip install -r $VENV/requirements-cpu.txt"
        echo "$VENV/bin/python -m pip install --no-deps '$no_deps'"
    fi
}

if [[ ${1:-} == --print-plan ]]; then
    plan
    exit 0
elif [[ $# -gt 0 ]]; then
    echo "usage: $0 [--print-plan]" >&2
    exit 2
fi

commands="$(plan)"
# The stamp holds a checksum of the plan and requirements.txt: a change to either (or to the torch build)
# runs the plan again; pip then installs only what is missing.
wanted="$(printf '%s\n' "$commands" | cat - requirements.txt | cksum)"
if [[ -x $VENV/bin/python && -f $STAMP && "$(cat "$STAMP")" == "$wanted" ]]; then
    echo "$VENV is up to date ($(torch_build) torch); tools/setup_env.sh --print-plan shows how it was made"
    exit 0
fi

if ! "$PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    echo "error: '$PYTHON -m venv' is not available, so .venv cannot be created." >&2
    echo "  Install it (Debian/Ubuntu: apt-get install python3-venv), or name another Python 3:" >&2
    echo "  PYTHON=/path/to/python3 make install" >&2
    exit 1
fi

while IFS= read -r command; do
    echo "+ $command"
    eval "$command" </dev/null
done <<<"$commands"
echo "$wanted" >"$STAMP.tmp" && mv "$STAMP.tmp" "$STAMP"
echo "$VENV is ready ($(torch_build) torch)"
