#!/usr/bin/env bash
# GPU readiness check of grn_jax, in one script and under 8 minutes (issue #15, item 6).
#
# Written for the accelerator machine some tasks are lent (one H200, jax 0.11.2, CUDA 13, Python 3.12,
# no network, no jraph / grain / anndata). Nothing there can be downloaded, so the wheels it lacks are
# fetched beforehand on a machine with pip and carried in .whl/ (/work/.library/device/README.md):
#
#   here:   benchmarks/gpu_check.sh --fetch-wheels      # .whl/ <- the missing packages (py3.12, x86-64)
#   there:  bash benchmarks/gpu_check.sh                # carry: [".whl"]
#   any:    benchmarks/gpu_check.sh --lower-only        # stages 3-5 lowered for CUDA only (a CPU is enough)
#
# On the GPU machine it
#   1. installs the carried wheels into $SITE (--target, no index, no deps) and makes the in-tree
#      package importable as it is installed (grn_jax.kernels is the top-level kernels/ folder);
#   2. runs the `gpu`-marked pytest tests and the CUDA lowering tests;
#   3. benchmarks/gpu_check.py kernels: every kernel against its reference (forward + VJP, f32 + bf16);
#   4. benchmarks/gpu_check.py speed: Pallas vs XLA diffusion, attention and GDKA: time + compiled memory;
#   5. benchmarks/gpu_check.py step: GDKA vs vanilla training step of the gremln_base body;
# and writes benchmarks/results/gpu.md (machine, stage status, test summary) beside gpu_kernels.md,
# gpu_speed.md and gpu_step.md. Each stage runs in its own process under `timeout`, inside one overall
# budget (GPU_CHECK_BUDGET_S, default 450 s): a failing or slow stage is recorded, not fatal.
# Exit status: 0 when every stage passed.
set -u -o pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}
RESULTS=${GPU_CHECK_RESULTS:-$ROOT/benchmarks/results}
SITE=${GPU_CHECK_SITE:-/tmp/gpu_check_site}
BUDGET_S=${GPU_CHECK_BUDGET_S:-450}
MODE=run
QUICK=()
for arg in "$@"; do
  case $arg in
    --fetch-wheels) MODE=fetch ;;
    --lower-only) MODE=lower ;;
    --quick) QUICK=(--quick) ;;
    -h|--help) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $arg (see --help)" >&2; exit 2 ;;
  esac
done

# Packages the GPU image lacks (KINDS.md's list) that importing grn_jax.graphs / grn_jax.models needs,
# with their own missing requirements. Versions: the ones installed here, so both machines agree.
WHEELS="jraph grain array-record portpicker anndata array-api-compat legacy-api-wrap natsort scverse-misc
session-info2 zarr donfig google-crc32c numcodecs"

if [ "$MODE" = fetch ]; then
  rm -rf .whl && mkdir -p .whl  # one version of each (two stop the whole install there)
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
  vpy=$PY; [ -x .venv/bin/python ] && vpy=.venv/bin/python  # the project's environment knows the tested versions
  for name in $WHEELS; do
    ver=$($vpy -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name" 2>/dev/null)
    spec=$name${ver:+==$ver}
    $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "$spec" \
      || { echo "gpu_check.sh: no py3.12 x86-64 wheel for $spec" >&2; exit 1; }
  done
  ls -l .whl && du -sh .whl
  exit 0
fi

if [ "$MODE" = lower ]; then  # everything up to .compile(), for CUDA, on any machine
  out=${GPU_CHECK_RESULTS:-/tmp/gpu_check_lowered}
  rc=0
  for stage in kernels speed step; do
    "$PY" benchmarks/gpu_check.py "$stage" --lower-only "${QUICK[@]}" --out "$out" || rc=1
  done
  exit $rc
fi

# ------------------------------------------------------------------------------------------------ 1
START=$SECONDS
mkdir -p "$RESULTS" "$SITE"
LOG=$RESULTS/gpu_check.log
: > "$LOG"
installed=none
if compgen -G ".whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
    >> "$LOG" 2>&1 && installed=$(ls .whl | sed 's/-py.*//; s/-cp.*//' | tr '\n' ' ')
fi
export PYTHONPATH=$SITE:$ROOT${PYTHONPATH:+:$PYTHONPATH}
LINKED=0
if ! "$PY" -c "import grn_jax.kernels" > /dev/null 2>&1 && [ ! -e grn_jax/kernels ]; then
  ln -s ../kernels grn_jax/kernels && LINKED=1  # what the installed package maps it to (pyproject.toml)
fi
trap '[ $LINKED = 1 ] && rm -f "$ROOT/grn_jax/kernels"' EXIT
# tests/conftest.py defaults JAX_PLATFORMS to cpu: name the GPU first. No preallocation: the stages'
# memory figures are XLA's compiled plans, and each process should hold only what it uses.
export JAX_PLATFORMS=${JAX_PLATFORMS:-cuda,cpu} XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1

missing=$("$PY" - <<'EOF' 2>&1
import importlib
bad = []
for m in ("jax", "flax", "optax", "orbax.checkpoint", "chex", "jraph", "grain", "anndata", "grn_jax.kernels",
          "grn_jax.graphs", "grn_jax.models"):
    try:
        importlib.import_module(m)
    except Exception as e:  # noqa: BLE001
        bad.append(f"{m} ({type(e).__name__}: {e})")
print("; ".join(bad) or "none")
EOF
)
env_line=$("$PY" -c "import sys, jax; d = jax.devices()[0]; print(f'python {sys.version.split()[0]}, jax {jax.__version__}, backend {jax.default_backend()}, {jax.device_count()} x {d.device_kind}')" 2>&1 | tail -1)
gpu_line=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1)

declare -a ROWS=()
FAILED=0
stage() {  # stage NAME LIMIT_S CMD...: run under the smaller of LIMIT_S and what the budget has left
  local name=$1 limit=$2; shift 2
  local left=$((BUDGET_S - (SECONDS - START)))
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -lt 20 ]; then
    ROWS+=("| $name | skipped: out of budget | 0 |"); FAILED=1; return
  fi
  local t0=$SECONDS rc
  echo "=== $name (limit ${limit}s): $*" | tee -a "$LOG"
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$LOG" | tail -n 40
  rc=${PIPESTATUS[0]}
  local status="ok"
  [ "$rc" = 124 ] || [ "$rc" = 137 ] && status="TIMED OUT after ${limit}s"
  [ "$rc" != 0 ] && [ "$status" = ok ] && status="FAILED (rc $rc)"
  [ "$rc" != 0 ] && FAILED=1
  ROWS+=("| $name | $status | $((SECONDS - t0)) |")
}

# ------------------------------------------------------------------------------------------------ 2
mapfile -t GPU_TESTS < <(grep -rl "pytest.mark.gpu" tests --include='test_*.py' | sort)
stage "pytest -m gpu (${GPU_TESTS[*]})" 120 "$PY" -m pytest -q -p no:cacheprovider -m gpu "${GPU_TESTS[@]}"
PYTEST_GPU=$(grep -E "^[0-9]+ (passed|failed|skipped|error)|^=+ .*(passed|failed|error)" "$LOG" | tail -1)
stage "pytest CUDA lowering (tests/kernels/test_triton_lowering.py)" 60 \
  "$PY" -m pytest -q -p no:cacheprovider tests/kernels/test_triton_lowering.py
PYTEST_LOWER=$(grep -E "^[0-9]+ (passed|failed|skipped|error)|^=+ .*(passed|failed|error)" "$LOG" | tail -1)
# ------------------------------------------------------------------------------------------------ 3-5
stage "kernels vs references (gpu_kernels.md)" 90 "$PY" benchmarks/gpu_check.py kernels "${QUICK[@]}" --out "$RESULTS"
stage "Pallas vs XLA speed + memory (gpu_speed.md)" 140 "$PY" benchmarks/gpu_check.py speed "${QUICK[@]}" --out "$RESULTS"
stage "GDKA vs vanilla step (gpu_step.md)" 100 "$PY" benchmarks/gpu_check.py step "${QUICK[@]}" --out "$RESULTS"

{
  echo "# GPU check (benchmarks/gpu_check.sh)"
  echo
  echo "Run $(date -u +%Y-%m-%dT%H:%M:%SZ) in $((SECONDS - START)) s (budget ${BUDGET_S} s)."
  echo
  echo "- GPU: ${gpu_line:-nvidia-smi not available}"
  echo "- ${env_line}"
  echo "- wheels installed from .whl: ${installed}"
  echo "- imports that failed: ${missing}"
  echo "- gpu-marked tests: ${PYTEST_GPU:-no summary line}"
  echo "- CUDA lowering tests: ${PYTEST_LOWER:-no summary line}"
  echo
  echo "| stage | status | seconds |"
  echo "|---|---|---|"
  printf '%s\n' "${ROWS[@]}"
  echo
  echo "Details: gpu_kernels.md (every kernel vs its reference), gpu_speed.md (Pallas vs XLA diffusion,"
  echo "attention and GDKA: compile time, median step, compiled temp memory), gpu_step.md (GDKA vs vanilla"
  echo "training step of gremln_base), gpu_check.log (full output)."
} > "$RESULTS/gpu.md"
cat "$RESULTS/gpu.md"
exit $FAILED
