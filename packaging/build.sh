#!/usr/bin/env bash
# Build the one-folder app with PyInstaller and smoke-test it:  bash packaging/build.sh
# Output: dist/adapter-studio/adapter-studio (+ _internal/). Needs the project's .venv (make install).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
APP="dist/adapter-studio/adapter-studio"

[ -x "$PY" ] || { echo "error: $PY not found: run 'make install' first" >&2; exit 1; }
if ! "$PY" -c "import PyInstaller" 2>/dev/null; then
    echo "== installing pyinstaller into $VENV"
    "$VENV/bin/pip" install -q pyinstaller
fi
"$PY" -m PyInstaller --version | sed 's/^/pyinstaller /'

echo "== building (this takes several minutes: torch and transformers are large)"
export PYTHONWARNINGS=ignore  # the hooks import every torch/transformers submodule: silence their deprecations
start=$(date +%s)
"$PY" -m PyInstaller --noconfirm --clean --log-level WARN \
    --distpath dist --workpath build/pyinstaller packaging/adapter-studio.spec
end=$(date +%s)
echo "build time: $((end - start)) s"

[ -x "$APP" ] || { echo "error: $APP was not built" >&2; exit 1; }
echo "bundle size: $(du -sh dist/adapter-studio | cut -f1) ($(du -sb dist/adapter-studio | cut -f1) bytes)"

echo "== smoke test"
export QT_QPA_PLATFORM=offscreen
fail=0
version=$("$APP" --version) || fail=1
echo "--version: $version"
[[ "$version" == adapter-studio* ]] || { echo "error: --version printed '$version'" >&2; fail=1; }

methods=$("$APP" methods) || fail=1
head -n 5 <<<"$methods"
grep -qi "^lora" <<<"$methods" || { echo "error: 'methods' does not list lora" >&2; fail=1; }

out=$(timeout 120 "$APP" --self-test) || { echo "error: --self-test failed" >&2; fail=1; }
seconds=$(printf '%s\n' "$out" | tail -n 1)
echo "--self-test: first paint after ${seconds} s"
[[ "$seconds" =~ ^[0-9]+(\.[0-9]+)?$ ]] || { echo "error: --self-test's last line is not seconds: '$seconds'" >&2; fail=1; }

if [ "$fail" -ne 0 ]; then
    echo "SMOKE TEST FAILED" >&2
    exit 1
fi
echo "smoke test passed: $APP"
