#!/usr/bin/env bash
# Prepare what benchmarks/gpu_session.sh needs on a GPU machine that has PyTorch but neither our
# other packages nor a network: wheels in .whl/ (Python 3.12, x86-64), the SmolLM2 tokenizer in
# .gpu/smollm2-tokenizer and benchmarks/scale.py's data in .gpu/data. Both folders are git-ignored (.git/info/exclude) and travel as carried paths.
#
#     bash benchmarks/gpu_prepare.sh            # here, with the project's .venv (needs PyPI)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY=.venv/bin/python
for ignored in /.whl/ /.gpu/; do
    grep -qxF "$ignored" .git/info/exclude || echo "$ignored" >>.git/info/exclude
done

# The same versions as this checkout's environment: transformers 5.25 needs a newer huggingface_hub
# (≥ 2.4, with httpx2 and kernels) than the GPU image's (1.33 in 2026-11), and its import checks that.
# The image's own torch, numpy, safetensors, tokenizers, tqdm, pyyaml, fsspec and filelock satisfy the rest.
version() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
wanted=("bitsandbytes==0.50.2")
for name in transformers peft accelerate gguf huggingface_hub httpx2 httpcore2 hf-xet click typer \
    regex packaging typing-extensions pydantic pydantic-core annotated-types typing-inspection tomlkit truststore; do
    # (not `kernels`: the engine turns hub kernels off, and without the package nothing can try to fetch one)
    wanted+=("$name==$(version $name)")
done
rm -rf .whl && mkdir -p .whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl "${wanted[@]}"

# bitsandbytes ships a library per CUDA version (~40 MB): keep the CPU one and CUDA 13's (the
# GPU image's torch is cu130), so the whole tree stays under the 64 MiB a call carries.
"$PY" - <<'EOF'
import pathlib, zipfile
wheel = next(pathlib.Path(".whl").glob("bitsandbytes-*.whl"))
keep = ("libbitsandbytes_cpu.so", "libbitsandbytes_cuda130.so", "libbitsandbytes_cuda132.so")
slim = wheel.with_suffix(".slim")
with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as out:
    for item in src.infolist():
        if item.filename.endswith(".so") and not item.filename.endswith(keep):
            continue
        out.writestr(item, src.read(item.filename))
slim.replace(wheel)
EOF

"$PY" -c "
from adapter_studio.engine.models.loading import EMBEDDED_SMOLLM2, load_tokenizer, resolve_source
load_tokenizer(resolve_source(EMBEDDED_SMOLLM2)).save_pretrained('.gpu/smollm2-tokenizer')
"
# benchmarks/scale.py's instruction data (1.6 MB): the GPU machine has no ../shared.
mkdir -p .gpu/data && cp ../shared/data/svamp.json ../shared/data/multiarith.json ../shared/data/hh_harmless_test.jsonl.gz .gpu/data/
du -sh .whl .gpu
