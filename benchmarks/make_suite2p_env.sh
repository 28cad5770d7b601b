#!/bin/sh
# Build a Python environment with suite2p, for benchmarks/suite2p_side.py (called by
# bench_piecewise.py --suite2p and by the accuracy benchmark).  suite2p is never an xreg
# dependency: it lives in a venv of its own, by default .suite2p-venv at the repository
# root (git-ignored).  About 6 GB (torch is a CUDA build; it runs on the CPU).
#
#     nice -n 15 sh benchmarks/make_suite2p_env.sh [DIR]     # then DIR/bin/python
#
# torch and torchvision are installed first, as a matching pair: PyPI's torchvision fails
# to import beside another torch ("operator torchvision::nms does not exist").  On this
# project's x86_64 machines, pip on Python 3.11 takes torch 2.14.1 and torchvision 0.29.1
# from the local disk; elsewhere pip downloads them.  PYTHON picks the interpreter
# (default python3; the versions were checked with 3.11).
set -eu
DIR=${1:-"$(cd "$(dirname "$0")/.." && pwd)/.suite2p-venv"}
"${PYTHON:-python3}" -m venv "$DIR"
"$DIR/bin/pip" install torch==2.14.1 torchvision==0.29.1
"$DIR/bin/pip" install suite2p==1.1.0
"$DIR/bin/python" -c "import suite2p, suite2p.registration.register, torch, torchvision; print('suite2p', suite2p.version, 'torch', torch.__version__, 'torchvision', torchvision.__version__)"
echo "suite2p environment ready: $DIR/bin/python"
