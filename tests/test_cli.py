"""The command line as scripts use it (CONTRACT.md): exit codes, messages, signals, exports."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "adapter_studio.cli"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "QT_QPA_PLATFORM": "offscreen"}


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, env=ENV)


def clis_at_once(*calls: list[str], timeout: float = 300) -> list[subprocess.CompletedProcess[str]]:
    """Independent command lines run side by side (each spends seconds importing torch on its own core)."""
    procs = [subprocess.Popen([*CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
             for args in calls]  # fmt: skip
    done = []
    for proc in procs:
        out, err = proc.communicate(timeout=timeout)
        done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return done


def write_spec(path: Path, model: Path, data: Path, runs: Path, **training: object) -> Path:
    train = {"max_steps": 6, "batch_size": 4, "save_every": 3, "eval_samples": 0, "precision": "float32", **training}
    path.write_text(
        f"model: {{source: {model}}}\ndata: {{path: {data}, max_length: 64}}\nmethod: {{name: lora}}\n"
        f"training: {json.dumps(train)}\noutput_dir: {runs}\n"
    )
    return path


def test_version_and_help_do_not_import_torch() -> None:
    code = "import sys; from adapter_studio.cli import main; main(['--version'])"
    out = subprocess.run([sys.executable, "-c", code + "\n"], capture_output=True, text=True, env=ENV)
    assert "adapter-studio" in out.stdout
    probe = (
        "import sys\nfrom adapter_studio import cli\ntry:\n cli.main(['--help'])\nexcept SystemExit: pass\n"
        "print('torch' in sys.modules, 'adapter_studio.engine.methods' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=ENV)
    assert out.stdout.strip().endswith("False False")  # not the method registry either (4× the start-up)


def test_train_export_and_runs(tmp_path, tiny_llama, alpaca_jsonl) -> None:  # type: ignore[no-untyped-def]
    spec = write_spec(tmp_path / "spec.yaml", tiny_llama, alpaca_jsonl, tmp_path / "runs")
    result = cli("train", str(spec), "--set", "training.max_steps=4", "--set", "method.target_modules=q_proj,v_proj")
    assert result.returncode == 0, result.stderr
    assert "finished completed at step 4" in result.stdout
    run_dir = next((tmp_path / "runs").iterdir())
    saved = (run_dir / "spec.yaml").read_text()
    assert "max_steps: 4" in saved and "- q_proj" in saved and "batch_size: 4" in saved
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    types = [e["type"] for e in events]
    assert types.count("metrics") == 4 and types[-1] == "finished"
    started = next(e for e in events if e["type"] == "started")
    assert {"run_dir", "model", "method", "trainable_params", "total_params", "total_steps", "device"} <= set(started)
    metrics = next(e for e in events if e["type"] == "metrics")
    assert {"step", "epoch", "loss", "lr", "grad_norm", "tokens_per_s", "tokens_seen", "memory_bytes"} <= set(metrics)

    adapter, merged = clis_at_once(["export", str(run_dir), "--adapter", "--out", str(tmp_path / "adapter")],
                                   ["export", str(run_dir), "--merged", "--out", str(tmp_path / "merged")])  # fmt: skip
    assert adapter.returncode == 0, adapter.stderr
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    assert merged.returncode == 0, merged.stderr
    assert "verified" in merged.stdout
    again, listing, table = clis_at_once(["export", str(run_dir), "--merged", "--out", str(tmp_path / "merged")],
                                         ["runs", "--dir", str(tmp_path / "runs"), "--json"],
                                         ["runs", "--dir", str(tmp_path / "runs")])  # fmt: skip
    assert again.returncode != 0 and again.stderr.startswith("error:") and "already exists" in again.stderr
    rows = json.loads(listing.stdout)
    assert rows[0]["status"] == "completed" and rows[0]["steps"] == 4
    head, line = table.stdout.splitlines()  # the columns the Runs page compares, aligned
    assert head.split() == ["run", "status", "model", "method", "steps", "eval_loss", "accuracy", "exact", "minutes"]
    assert line.split()[:5] == [run_dir.name, "completed", tiny_llama.name, "lora", "4/4"]


def test_read_only_target_leaves_nothing(tmp_path, tiny_llama, alpaca_jsonl) -> None:  # type: ignore[no-untyped-def]
    if os.geteuid() == 0:
        pytest.skip("root ignores directory permissions")
    spec = write_spec(tmp_path / "spec.yaml", tiny_llama, alpaca_jsonl, tmp_path / "runs", max_steps=2)
    assert cli("train", str(spec)).returncode == 0
    run_dir = next((tmp_path / "runs").iterdir())
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    out = cli("export", str(run_dir), "--adapter", "--out", str(locked / "x"))
    assert out.returncode != 0 and "permission denied" in out.stderr
    assert list(locked.iterdir()) == []


@pytest.mark.parametrize(
    ("overrides", "content", "expected"),
    [
        ([], None, "data file not found"),
        ([], '{"instruction": "a", "output": "b"}\n{broken\n', "line 2"),
        ([], '{"question": "a", "reply": "b"}\n', "columns found are question, reply"),
        (["--set", "method.r=0"], '{"instruction": "a", "output": "b"}\n', "method.r"),
        (["--set", "method.rr=4"], '{"instruction": "a", "output": "b"}\n', "did you mean r"),
        (["--set", "output_dir=/proc/nope"], '{"instruction": "a", "output": "b"}\n',
         "output_dir: cannot make the run folder /proc/nope"),
        (["--set", "data.columns={instruction: prompt}"], '{"instruction": "a", "output": "b"}\n',
         "data.columns maps instruction to 'prompt', which this file does not have"),
        (["--set", "method.target_modules=[nope_proj]"], '{"instruction": "a", "output": "b"}\n',
         "method.target_modules: this model has no layer named nope_proj — pick from its linear layers: q_proj"),
        (["--set", "model.source=someorg/not-here"], '{"instruction": "a", "output": "b"}\n',
         "'someorg/not-here' is not in this machine's Hugging Face cache"),
        (["--set", "model.source=smollm-typo"], '{"instruction": "a", "output": "b"}\n',
         "model not found: smollm-typo — give a model folder, a .gguf file, a hub id (owner/name) or an embedded "
         "model (embedded:smollm2-135m-instruct, embedded:all-minilm-l6-v2); to compare costs only"),
    ],
    ids=["missing file", "malformed line", "missing column", "r=0", "unknown key", "unwritable runs folder",
         "mapped column missing", "unknown target module", "hub id not cached", "model not found"],
)
def test_bad_input_is_one_clear_line(tmp_path, tiny_llama, overrides, content, expected) -> None:  # type: ignore[no-untyped-def]
    data = tmp_path / "data.jsonl"
    if content is not None:
        data.write_text(content)
    spec = write_spec(tmp_path / "spec.yaml", tiny_llama, data, tmp_path / "runs")
    if "question" in (content or ""):
        overrides = [*overrides, "--set", "data.format=alpaca"]
    out = cli("train", str(spec), *overrides)
    assert out.returncode != 0
    assert expected in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    # Said once on stderr; stdout ends with the run's finished line, not the error again before it.
    assert len([line for line in out.stderr.splitlines() if line.startswith("error: ")]) == 1, out.stderr
    assert "error: " not in out.stdout, out.stdout


def test_a_spec_that_is_not_utf8_names_the_file_and_line(tmp_path) -> None:  # type: ignore[no-untyped-def]
    spec = tmp_path / "spec.yaml"
    spec.write_bytes(b"model: {source: x}\n# caf\xe9\n")
    out = cli("train", str(spec))
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert f"{spec}:2: not UTF-8 text (byte 0xe9" in out.stderr, out.stderr


def test_pickle_weights_are_refused_unless_allowed(tmp_path, tiny_llama, alpaca_jsonl) -> None:  # type: ignore[no-untyped-def]
    """A model folder whose weights are only a pickle (.bin) loads only with model.allow_pickle_weights."""
    import shutil

    import torch
    from safetensors.torch import load_file

    folder = tmp_path / "pickled"
    shutil.copytree(tiny_llama, folder)
    for weights in folder.glob("*.safetensors"):
        torch.save(load_file(str(weights)), folder / "pytorch_model.bin")
        weights.unlink()
    spec = write_spec(tmp_path / "spec.yaml", folder, alpaca_jsonl, tmp_path / "runs", max_steps=1)
    allow = ["--set", "model.allow_pickle_weights=true"]
    refused, allowed = clis_at_once(["train", str(spec)], ["train", str(spec), *allow])
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert "has its weights only as pickles" in refused.stderr and "allow_pickle_weights" in refused.stderr
    assert allowed.returncode == 0, allowed.stderr


def test_sigterm_and_sigint_stop_cleanly_with_a_checkpoint(tmp_path, tiny_llama, alpaca_jsonl) -> None:  # type: ignore[no-untyped-def]
    # The two runs train at once (each its own runs folder): half the wall time of one after the other.
    runs = {sig: tmp_path / f"runs-{sig.name}" for sig in (signal.SIGINT, signal.SIGTERM)}
    procs = {}
    for sig, folder in runs.items():
        spec = write_spec(tmp_path / f"{sig.name}.yaml", tiny_llama, alpaca_jsonl, folder, max_steps=100000,
                          save_every=100000)  # fmt: skip
        # start_new_session: like a background job of a script, which ignores SIGINT by default.
        procs[sig] = subprocess.Popen([*CLI, "train", str(spec)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, env=ENV, start_new_session=True)  # fmt: skip
    for sig, proc in procs.items():
        deadline = time.time() + 120
        while time.time() < deadline:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            if line.startswith("step 3 "):
                break
        proc.send_signal(sig)
    for sig, proc in procs.items():
        _out, err = proc.communicate(timeout=120)
        assert proc.returncode == 130, (sig.name, err)
        run_dir = next(runs[sig].iterdir())
        assert list((run_dir / "checkpoints").glob("step-*")), sig.name
        last = json.loads((run_dir / "events.jsonl").read_text().splitlines()[-1])
        assert last["type"] == "finished" and last["status"] == "cancelled", sig.name

    def one_step_more(folder: Path) -> list[str]:  # resumed from its checkpoint, it trains a step and completes
        run_dir = next(folder.iterdir())
        step = int(max(run_dir.glob("checkpoints/step-*")).name.removeprefix("step-"))
        return ["train", "--resume", str(run_dir), "--set", f"training.max_steps={step + 1}"]

    resumes = clis_at_once(*[one_step_more(folder) for folder in runs.values()])
    for sig, resumed in zip(runs, resumes, strict=True):
        assert resumed.returncode == 0, (sig.name, resumed.stderr)
        assert "finished completed" in resumed.stdout, (sig.name, resumed.stdout)


def test_methods_json_lists_the_whole_library() -> None:
    out = cli("methods", "--json")
    rows = json.loads(out.stdout)
    names = {r["name"] for r in rows}
    assert {
        "lora",
        "dora",
        "rslora",
        "loraplus",
        "adalora",
        "adapter_h",
        "adapter_p",
        "parallel_adapter",
        "prompt_tuning",
        "p_tuning",
        "prefix_tuning",
        "p_tuning_v2",
        "llama_adapter",
        "ia3",
        "bitfit",
        "last_layers",
        "full",
        "loha",
        "lokr",
        "vera",
        "oft",
        "mam",
    } <= names
    assert all({"name", "family", "mergeable", "description"} <= set(r) for r in rows)


def test_self_test_prints_seconds_to_first_paint() -> None:
    out = subprocess.run(
        [*CLI, "--self-test"], capture_output=True, text=True, env=ENV, timeout=120
    )
    assert out.returncode == 0, out.stderr
    seconds = float(out.stdout.strip().splitlines()[-1])
    assert 0 < seconds < 60


@pytest.mark.slow
def test_real_smollm2_trains_end_to_end_through_the_cli(tmp_path) -> None:  # type: ignore[no-untyped-def]
    demo = Path(__file__).resolve().parent.parent / "resources" / "demo" / "demo.yaml"
    out = cli(
        "train",
        str(demo),
        "--set",
        "training.max_steps=3",
        "--set",
        f"output_dir={tmp_path}",
        "--set",
        "training.eval_samples=2",
        "--set",
        "training.save_every=3",
        timeout=900,
    )
    assert out.returncode == 0, out.stderr
    assert "SmolLM2" in out.stdout or "smollm2" in out.stdout
    assert "finished completed at step 3" in out.stdout
    run_dir = next(tmp_path.iterdir())
    started = next(json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines() if '"started"' in x)
    assert started["total_params"] > 134_000_000 and started["trainable_params"] == 460_800  # the demo: LoRA r 8 on q,v


def test_a_classifier_trains_without_transformers_load_report(tmp_path, classification_csv) -> None:  # type: ignore[no-untyped-def]
    """MiniLM's new head is reported by transformers as MISSING weights; the CLI says what it loaded itself."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(json.dumps({"model": {"source": "embedded:all-minilm-l6-v2"},
                                "data": {"path": str(classification_csv), "max_length": 32, "eval_split": 0},
                                "training": {"max_steps": 1, "batch_size": 2, "eval_samples": 0},
                                "output_dir": str(tmp_path / "runs")}))  # fmt: skip
    out = cli("train", str(spec), timeout=600)
    assert out.returncode == 0, out.stderr
    assert "loaded all-MiniLM-L6-v2" in out.stdout and "finished completed at step 1" in out.stdout
    assert "LOAD REPORT" not in out.stderr + out.stdout and "MISSING" not in out.stderr + out.stdout
    assert "Loading weights" not in out.stderr + out.stdout  # transformers' progress bar: the app's line says it
    run_dir = next((tmp_path / "runs").iterdir())
    exported = cli("export", str(run_dir), "--adapter", "--out", str(tmp_path / "adapter"), timeout=600)
    assert exported.returncode == 0, exported.stderr
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    # Where the shipped copy sits on this machine is nowhere on another: peft's loaders read the hub id.
    assert config["base_model_name_or_path"] == "sentence-transformers/all-MiniLM-L6-v2"
    card = (tmp_path / "adapter" / "README.md").read_text()  # a classifier is no causal LM, and has its head size
    assert ("AutoModelForSequenceClassification.from_pretrained('sentence-transformers/all-MiniLM-L6-v2', "
            "num_labels=2, id2label={0: 'negative', 1: 'positive'})") in card  # the base named, and the labels


def test_wrong_arguments_are_refused_before_anything_runs(tmp_path, tiny_llama, alpaca_jsonl) -> None:  # type: ignore[no-untyped-def]
    """Found by trying ~160 bad inputs: each of these trained on, wrote elsewhere or ended in a traceback."""
    spec = write_spec(tmp_path / "spec.yaml", tiny_llama, alpaca_jsonl, tmp_path / "runs")
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    cases = [
        (["train", str(spec), "--devices", "0"], "error: --devices: must be at least 1 (got 0)"),
        (["train", str(spec), "--resume", str(tmp_path)], "error: train: give a spec file or --resume RUN_DIR, not "
                                                          "both — to change a resumed run's settings, add --set"),
        (["train", str(spec), "--set", "model.device=cuda", "--set", f"output_dir={tmp_path / 'cuda-runs'}"],
         "error: model.device: cuda is asked for, and this machine's PyTorch sees no CUDA GPU"),
        (["params", "--model", str(tiny_llama), "--methods", "lora", "--set", "method.r=abc"],
         "error: --set: method.r: input should be a valid integer"),
        (["params", "--model", str(tiny_llama), "--methods", "lorra"], "error: --methods: unknown method 'lorra'"),
        (["params", "--model", str(a_file)], f"error: --model: {a_file} is not a model folder or .gguf file — give"),
        (["runs", "--dir", str(a_file)], f"error: --dir: {a_file} is a file, not a folder of runs"),
    ]
    for (args, expected), out in zip(cases, clis_at_once(*(args for args, _ in cases)), strict=True):
        if "cuda" in expected and "CUDA" in out.stdout:  # a machine with a GPU trains there
            continue
        assert out.returncode == 2 and expected in out.stderr and "Traceback" not in out.stderr, (args, out.stderr)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "cuda-runs").exists()  # no run folder left behind


@pytest.mark.parametrize(
    "argv",
    [["export", "{typed}", "--adapter", "--out", "o"], ["eval", "{typed}"], ["train", "--resume={typed}"],
     ["combine", "{typed}", "{typed}"]],
    ids=["export", "eval", "train --resume", "combine"],
)  # fmt: skip
@pytest.mark.parametrize("typed", ["~/runs/x", "~/runs/x/spec.yaml"])
def test_a_run_folder_is_read_with_its_tilde_and_as_its_spec(argv, typed, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """`--resume=~/runs/x` (bash leaves that ~ as it is) was "not a run folder", and so was a run's spec.yaml
    given for its folder ("x/spec.yaml is not a run folder (no spec.yaml)")."""
    from adapter_studio.cli import _parser

    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "runs" / "x").mkdir(parents=True)
    (tmp_path / "runs" / "x" / "spec.yaml").write_text("model: m\n")
    args = _parser().parse_args([part.format(typed=typed) for part in argv])
    read = args.resume if argv[0] == "train" else (args.run_dirs[0] if argv[0] == "combine" else args.run_dir)
    assert read == str(tmp_path / "runs" / "x")


def test_a_max_length_past_a_position_table_is_refused(tmp_path, tiny_gpt2, alpaca_jsonl) -> None:  # type: ignore[no-untyped-def]
    """GPT-2's 256 learned positions: 1,024 tokens failed at step 0 with an IndexError. (Rotary positions read on
    past their training length, and are left to the person.)"""
    spec = write_spec(tmp_path / "spec.yaml", tiny_gpt2, alpaca_jsonl, tmp_path / "runs", max_steps=1)
    out = cli("train", str(spec), "--set", "data.max_length=1024")
    assert out.returncode == 2, out.stderr
    assert "data.max_length: 1024 tokens is past the 256 positions this model has — give at most 256" in out.stderr


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("method.r=16", "--set method.r: a resumed run keeps its method and the method's settings (method.r 8)"),
        ("method.name=dora", "--set method.name: a resumed run keeps its method and the method's settings (method.name "
                             "'lora')"),
        ("model.source=embedded:all-minilm-l6-v2", "--set model.source: a resumed run keeps its base model"),
        ("objective={name: dpo}", "--set objective: a resumed run keeps its objective"),
    ],
    ids=["rank", "method", "model", "objective"],
)
def test_a_resume_refuses_another_model_or_method_and_leaves_the_run_as_it_was(
    override: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--resume RUN --set method.r=16` failed after the model loaded (a tensor size mismatch), with the new rank
    saved in the run's spec.yaml: every later plain resume failed the same way."""
    from adapter_studio.cli import main
    from adapter_studio.engine.spec import parse_spec

    for name, value in (("TRANSFORMERS_VERBOSITY", "error"), ("HF_HUB_DISABLE_PROGRESS_BARS", "1")):
        monkeypatch.setenv(name, value)  # what main() sets for its libraries, taken back after the test
    run_dir = tmp_path / "lora-1"
    run_dir.mkdir()
    parse_spec({"model": {"source": "embedded:smollm2-135m-instruct"}, "data": {"path": str(tmp_path / "d.jsonl")},
                "method": {"name": "lora", "r": 8, "init": "default"}}).save(run_dir / "spec.yaml")  # fmt: skip
    before = (run_dir / "spec.yaml").read_bytes()
    assert main(["train", "--resume", str(run_dir), "--set", override, "--set", "training.max_steps=9"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}"), err
    assert err.rstrip().endswith(f"adapter-studio train {run_dir}/spec.yaml --set {override}")
    assert (run_dir / "spec.yaml").read_bytes() == before and sorted(p.name for p in run_dir.iterdir()) == ["spec.yaml"]


@pytest.mark.parametrize(
    ("name", "why"),
    [("gone", "does not exist"), ("notes.txt", "is a file"), ("", "has no spec.yaml")],
    ids=["missing", "a file", "a folder without a spec"],
)
def test_resume_of_something_that_is_not_a_run_says_why(
    name: str, why: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """It said "… is not a run folder (no spec.yaml)" of a path that did not exist, with nothing to do."""
    from adapter_studio.cli import main

    for variable, value in (("TRANSFORMERS_VERBOSITY", "error"), ("HF_HUB_DISABLE_PROGRESS_BARS", "1")):
        monkeypatch.setenv(variable, value)
    (tmp_path / "notes.txt").write_text("not a run\n")
    folder = tmp_path / name if name else tmp_path
    assert main(["train", "--resume", str(folder)]) == 2
    assert capsys.readouterr().err == (f"error: --resume: {folder} is not a run folder: it {why} — give a run folder "
                                       "(`adapter-studio runs` lists them)\n")  # fmt: skip
