#!/usr/bin/env bash
# SyncBatchNorm's distributed parity tests (tests/test_sync_batchnorm.py -m distributed) on
# GPU, for a session that has one; CI stays on gloo/CPU. Run from the repository root:
#
#   PYTHON=/path/to/python bench/gpu_syncbn_check.sh      # needs torch with CUDA, and pytest
#
# >= 2 GPUs: NCCL, 2 processes, one GPU each (the check that matters).
# 1 GPU:     NCCL refuses two ranks on one device in most versions ("Duplicate GPU detected"),
#            so it is tried once, to record what this NCCL does, and then the same tests run
#            with gloo on CUDA tensors: the device-agnostic code on GPU memory, with gloo's
#            CUDA collectives (what gloo does not support there fails with gloo's message).
# Each attempt is bounded by `timeout` (the tests also bound every collective and join).
# Exit status 0 when the NCCL run passed, 1 when it failed, 2 when only the gloo run could run
# and passed, 3 when nothing passed.
set -u
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
n_gpu=$("$PY" -c "import torch; print(torch.cuda.device_count())") || exit 3
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'nccl', torch.cuda.nccl.version() if torch.cuda.is_available() else None, \
[torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])"
echo "GPUs: $n_gpu"
[ "$n_gpu" -ge 1 ] || { echo "no CUDA device: nothing to check"; exit 3; }

attempt() {  # attempt BACKEND: the distributed tests, 2 processes, tensors on CUDA
    echo "== backend $1, 2 processes, $n_gpu GPU(s)"
    BNLAB_SYNCBN_BACKEND=$1 BNLAB_SYNCBN_DEVICE=cuda BNLAB_SYNCBN_WORLD=2 \
        timeout 300 "$PY" -m pytest -q -p no:cacheprovider -m distributed \
        tests/test_sync_batchnorm.py 2>&1 | tail -25
    return "${PIPESTATUS[0]}"
}

if attempt nccl; then
    echo "RESULT: NCCL parity tests passed"
    exit 0
fi
if [ "$n_gpu" -ge 2 ]; then
    echo "RESULT: NCCL parity tests FAILED"
    exit 1
fi
echo "(NCCL with two ranks on one GPU did not pass: see above; trying gloo on CUDA tensors)"
if attempt gloo; then
    echo "RESULT: gloo on CUDA tensors passed; NCCL not checked (needs 2 GPUs)"
    exit 2
fi
echo "RESULT: nothing passed"
exit 3
