"""Spec files as people write them: shorthands accepted, mistakes refused with the file, line, field and fix."""

from __future__ import annotations

from pathlib import Path

import pytest
from adapter_studio.engine.errors import UserError
from adapter_studio.engine.spec import load_spec_file

HEAD = "model: {source: /models/here}\ndata: {path: d.jsonl}\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (HEAD + "training:\n  learning_rate: 0.001\n  max_steps: 2\n  learning_rate: 5\n",
         "spec.yaml:6: 'learning_rate' is given twice (first on line 4) — keep one of them"),  # PyYAML kept the 5
        (HEAD + "training:\n  max_steps: yes\n", "spec.yaml:4: training.max_steps: true/false is not a number"),
        (HEAD + "method: {name: lora, r: on}\n", "spec.yaml:3: method.r: true/false is not a number"),
        (HEAD + "data:\n  eval_split: no\n", "'data' is given twice"),
        ("model: {source: /m}\ndata:\n  path: \"d.jsonl\ntraining:\n  max_steps: 2\n",
         "spec.yaml:3: not valid YAML (found unexpected end of stream while scanning a quoted scalar that starts "
         "here)"),  # the quote left open on line 3, found at the end of the file
        ("Model: {source: /m}\ndata: d.jsonl\n", "spec.yaml:1: unknown key 'Model' — did you mean model?"),
        ("model: {source: /m}\n data: {path: d.jsonl}\n",  # the parser blamed line 1, in its own words
         "spec.yaml:2: this line does not line up with the lines above it (indented differently), or has text after "
         "a closing } or ]"),
        (HEAD + "training: {max_steps: 1} extra\n", "spec.yaml:3: this line does not line up"),
        ("model:\n\tsource: /m\n", "spec.yaml:2: indented with a tab: YAML takes spaces only — indent with spaces"),
        ("model embedded:smollm2\ndata: {path: d.jsonl}\n",  # the parser stops on line 2
         "spec.yaml:1: no ':' after the key on this line — write it as key: value"),
        (HEAD + "method: {name: LoRA++}\n", "unknown method 'LoRA++' — did you mean lora"),
        (HEAD + "training: {machines: two}\n",
         "spec.yaml:3: training.machines holds settings, not 'two' — give them as a 'key: value' line each under it "
         "(count, rank, main_address, main_port, …)"),
        (HEAD + "name: ../elsewhere\n", "spec.yaml:3: name: a run folder's name, not a path"),
        (HEAD + "name: /tmp/elsewhere\n", "name: a run folder's name, not a path"),
        (HEAD + "output_dir: ''\n", "output_dir: empty: name the folder that holds the run folders"),
        ("- model\n- data\n", "a spec file is a mapping with model, data, method and training, not a list — start it"),
        (HEAD + "training: {max_steps: true}\ntraining: {}\n", "'training' is given twice"),
        (HEAD.replace("d.jsonl}", "d.jsonl, label_names: {1: World, 2: World}}"),
         "spec.yaml:2: data.label_names: two labels named 'World': they would be one class"),
        (HEAD.replace("d.jsonl}", "d.jsonl, label_names: {1: }}"), "data.label_names: each label needs a name"),
        (HEAD.replace("d.jsonl}", "d.jsonl, label_names: [World]}"),
         "spec.yaml:2: data.label_names holds entries, not a list ('- ' before its lines) — give them as a 'key: "
         "value' line each under it"),
        (HEAD + "training:\n- max_steps: 1\n", "spec.yaml:3: training holds settings, not a list ('- ' before its "
                                               "lines) — give them as a 'key: value' line each under it (max_steps,"),
        (HEAD + "method: {name: ia3, target_modules: [k_proj], feedforward_modules: [down_proj]}\n",
         "spec.yaml:3: method.feedforward_modules: down_proj is not among the target modules (k_proj)"),
    ],
    ids=["key twice", "yes for a number", "on for a rank", "section twice", "open quote", "capital key",
         "indented out of step", "text after braces", "a tab", "no colon",
         "unknown method", "scalar for a section", "name with ..", "absolute name", "empty output_dir", "a list",
         "training twice", "a name twice", "a label without a name", "a list of names",
         "a section as a list", "ia3 feed-forward outside its targets"],
)
def test_spec_mistakes_are_said_with_the_line_and_the_fix(text: str, message: str, tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(UserError) as caught:
        load_spec_file(path)
    assert message in caught.value.message.replace(str(tmp_path) + "/", "")


def test_anchors_and_merge_keys_may_override_what_they_bring(tmp_path: Path) -> None:
    """A key a merge (`<<`) brings in is not "given twice" where the mapping overrides it, nested or not."""
    path = tmp_path / "spec.yaml"
    path.write_text("model: /m\ndata: {path: d.jsonl, columns: &cols {<<: {instruction: q}, instruction: question}}\n"
                    "method: {<<: {name: lora, r: 4, alpha: 8}, r: 8}\nobjective: {<<: *cols}\n", encoding="utf-8")
    with pytest.raises(UserError) as caught:  # read through the merges: the objective got a column mapping
        load_spec_file(path)
    assert "unknown key 'objective.instruction'" in caught.value.message
    path.write_text(path.read_text().replace("objective: {<<: *cols}\n", ""), encoding="utf-8")
    spec = load_spec_file(path)
    assert (spec.method.r, spec.method.alpha, spec.data.columns) == (8, 8, {"instruction": "question"})


def test_a_folder_given_as_the_spec_says_so(tmp_path: Path) -> None:
    with pytest.raises(UserError) as caught:
        load_spec_file(tmp_path)
    assert caught.value.message == f"{tmp_path}: this is a folder, not a spec file — give the spec's .yaml file " \
                                   "(a run folder's is its spec.yaml)"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("model: /m\ndata: d.jsonl\nmethod: DoRA\nobjective: DPO\n", ("dora", "dpo", "d.jsonl")),
        ("model: /m\ndata: [a.jsonl, b.jsonl]\nmethod: {name: }\n", ("lora", "sft", ["a.jsonl", "b.jsonl"])),
        ("model: /m\ndata: d.jsonl\nmethod: {name: LoRA+, r: 4}\n", ("loraplus", "sft", "d.jsonl")),
        ("model: /m\ndata: d.jsonl\nmethod: p-tuning\nname: ''\n", ("p_tuning", "sft", "d.jsonl")),
    ],
    ids=["one-word sections", "data as a list, empty method name", "a title's spelling", "p-tuning"],
)
def test_sections_written_as_their_one_value_read_as_people_mean(text: str, expected: tuple, tmp_path: Path) -> None:  # type: ignore[type-arg]
    path = tmp_path / "spec.yaml"
    path.write_text(text, encoding="utf-8")
    spec = load_spec_file(path)
    paths = spec.data.path if isinstance(spec.data.path, list) else [spec.data.path]
    assert (spec.method.name, spec.objective.name) == expected[:2] and spec.name is None
    named = expected[2] if isinstance(expected[2], list) else [expected[2]]
    assert paths == [str(tmp_path / p) for p in named]  # relative to the spec file, found there or not


def test_a_relative_path_found_from_the_current_folder_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "specs").mkdir()
    (tmp_path / "here.jsonl").write_text("{}\n")
    path = tmp_path / "specs" / "spec.yaml"
    path.write_text("model: /m\ndata: here.jsonl\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    assert load_spec_file(path).data.path == "here.jsonl"


@pytest.mark.parametrize(
    ("paths", "field", "message"),
    [
        ([], "data.path", "data.path: data.path is empty — give a data file"),  # was StopIteration
        ("  ", "data.path", "data.path: data.path is empty"),
        (["d.jsonl", ""], "data.path", "data.path: data.path lists an empty path"),  # read the current folder
        ("nope.jsonl", "data.eval_path", "data.eval_path: data file not found: nope.jsonl"),  # was named data.path
    ],
)
def test_data_paths_that_name_nothing_say_which_field(paths: str | list[str], field: str, message: str) -> None:
    from adapter_studio.engine.data.files import data_files

    with pytest.raises(UserError) as caught:
        data_files(paths, field)
    assert caught.value.message.startswith(message)


def test_an_eval_file_gone_since_the_run_is_named_as_the_eval_file(tmp_path: Path) -> None:
    """The Try and Evaluate pages read a finished run's eval file again: gone, it is data.eval_path's fault."""
    from adapter_studio.engine.data.examples import load_examples
    from adapter_studio.engine.spec import DataSpec

    (tmp_path / "train.jsonl").write_text('{"text": "a"}\n')
    data = DataSpec(path=str(tmp_path / "train.jsonl"), eval_path=str(tmp_path / "moved.jsonl"))
    with pytest.raises(UserError) as caught:
        load_examples(data, data.eval_path or "")
    assert caught.value.where == "data.eval_path" and "moved.jsonl" in caught.value.message


def test_an_environment_variable_in_a_data_path_is_read_as_a_shell_reads_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from adapter_studio.engine.data.files import data_files

    (tmp_path / "d.jsonl").write_text("{}\n")
    monkeypatch.setenv("MY_DATA", str(tmp_path))
    assert data_files("$MY_DATA/d.jsonl") == [tmp_path / "d.jsonl"]


def test_an_export_folder_that_cannot_be_made_is_said(tmp_path: Path) -> None:
    from adapter_studio.engine.export.run_export import new_export_folder

    with pytest.raises(UserError) as caught:
        new_export_folder(Path("/proc/no-such/out"))
    assert caught.value.message.startswith("--out: cannot make the folder /proc/no-such")
    a_file = tmp_path / "notes.txt"
    a_file.write_text("")
    with pytest.raises(UserError) as caught:  # "cannot make the folder …/notes.txt: File exists"
        new_export_folder(a_file / "sub" / "out")
    assert caught.value.message.startswith(f"--out: {a_file} is a file, not a folder — give a folder path")


@pytest.mark.parametrize("name", ["../elsewhere", "/tmp/elsewhere", "a/b", "..", "a\\b", "D:elsewhere"])
def test_a_run_folder_is_made_inside_output_dir_whatever_names_it(name: str, tmp_path: Path) -> None:
    """`combine --name` names a run without a spec's check: the folder maker refuses a path too."""
    from adapter_studio.engine.runs import new_run_dir

    with pytest.raises(UserError) as caught:
        new_run_dir(str(tmp_path / "runs"), name, "lora")
    assert caught.value.message.startswith("name: a run folder's name, not a path")
    assert new_run_dir(str(tmp_path / "runs"), "my-run", "lora") == tmp_path / "runs" / "my-run"


def test_true_false_given_with_set_is_blamed_on_set_not_the_file(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(HEAD + "training: {max_steps: 3}\n", encoding="utf-8")
    with pytest.raises(UserError) as caught:
        load_spec_file(path, ["training.max_steps=yes"])
    assert caught.value.message.startswith("--set: training.max_steps: true/false is not a number")


def test_a_bad_value_given_with_set_is_blamed_on_set_not_the_files_line(tmp_path: Path) -> None:
    """It said "spec.yaml:4: … change training.learning_rate in the spec" for the value --set gave."""
    path = tmp_path / "spec.yaml"
    path.write_text(HEAD + "training:\n  learning_rate: 0.001\n", encoding="utf-8")
    with pytest.raises(UserError) as caught:
        load_spec_file(path, ["training.learning_rate=-1"])
    assert caught.value.message.startswith("--set: training.learning_rate: "), caught.value.message
    assert caught.value.message.endswith("change training.learning_rate in the --set value")
    path.write_text(HEAD + "training:\n  learning_rate: -1\n", encoding="utf-8")
    with pytest.raises(UserError) as caught:
        load_spec_file(path, ["training.max_steps=3"])
    assert caught.value.message.startswith(f"{path}:4: training.learning_rate: "), caught.value.message  # the file's


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.label_names.1=yes"], "--set: data.label_names: a name read as true/false"),
        (["data.label_names.1=[x]"], "--set: data.label_names: each label needs a name (text)"),
        (["data.label_names=[a]"],
         "--set: data.label_names holds entries, not a list — give them as --set data.label_names.KEY=VALUE for each"),
        (["training=5"], "--set: training holds settings, not 5 — give them as --set training.KEY=VALUE for each "
                         "(max_steps, epochs, batch_size, gradient_accumulation, …)"),
    ],
    ids=["yes for a name", "a list for a name", "a list for the names", "a number for a section"],
)
def test_an_entry_set_below_a_field_is_blamed_on_set(overrides: list[str], message: str, tmp_path: Path) -> None:
    """`--set data.label_names.1=yes` fails as data.label_names: it was blamed on the file's `data:` line."""
    path = tmp_path / "spec.yaml"
    path.write_text(HEAD, encoding="utf-8")
    with pytest.raises(UserError) as caught:
        load_spec_file(path, overrides)
    assert caught.value.message.startswith(message), caught.value.message


def test_params_refuses_true_false_for_a_method_number(tiny_llama: Path) -> None:
    from adapter_studio.engine.estimate.table import estimate_table

    with pytest.raises(UserError) as caught:  # it counted r=1 (305,280 trainable), unsaid
        estimate_table(str(tiny_llama), "lora", ["method.r=yes"])
    assert caught.value.message.startswith("--set: method.r: true/false is not a number")


def test_another_method_set_on_a_spec_leaves_the_first_ones_fields_behind(tmp_path: Path) -> None:
    """A run's saved spec lists every LoRA field; `--set method.name=dora` on it refused LoRA's `init` as an unknown
    key of the file (a line the app wrote). A field --set gives is still checked against the new method."""
    path = tmp_path / "spec.yaml"
    path.write_text(HEAD + "method: {name: lora, r: 4, init: pissa}\n", encoding="utf-8")
    spec = load_spec_file(path, ["method.name=dora"])
    assert (spec.method.name, spec.method.r) == ("dora", 4)
    with pytest.raises(UserError, match=r"unknown key 'method\.init'"):
        load_spec_file(path, ["method.name=dora", "method.init=pissa"])


@pytest.mark.parametrize(
    ("file", "overrides", "field", "expected"),
    [
        ("", ["data.template=Q: {instruction}"], "data.template", "Q: {instruction}"),  # YAML: {'Q': {...}}
        ("", ["data.system_prompt=#1 rule: be brief"], "data.system_prompt", "#1 rule: be brief"),  # a comment
        ("", ["data.system_prompt=- be brief"], "data.system_prompt", "- be brief"),  # a list of one
        ("", ["method.target_modules=[q_proj, v_proj]"], "method.target_modules", ["q_proj", "v_proj"]),
        ("training: {machines: 2}\n", ["training.machines.rank=1"], "training.machines.count", 2),  # it was lost
        ("", ["training.machines=3", "training.machines.rank=2"], "training.machines.count", 3),
        ("", ["training.machines.hosts=a,b"], "training.machines.hosts", ["a", "b"]),  # as list fields take them
    ],
    ids=["template", "hash", "dash", "list", "machines count kept", "count set first", "hosts comma list"],
)
def test_set_values_read_as_a_person_means_them(file: str, overrides: list[str], field: str, expected: object,
                                                 tmp_path: Path) -> None:  # fmt: skip
    path = tmp_path / "spec.yaml"
    path.write_text(HEAD + file, encoding="utf-8")
    value: object = load_spec_file(path, overrides)
    for part in field.split("."):
        value = getattr(value, part)
    assert value == expected


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("method.target_modules=[q_proj, v_proj",
         "--set method.target_modules: the list is not closed ([q_proj, v_proj) — end it with ], e.g. --set "
         "'method.target_modules=[a, b]'"),
        ("data.columns={instruction: q", "--set data.columns: the mapping is not closed ({instruction: q) — end it "
                                         "with }, or give each entry as --set data.columns.NAME=VALUE"),
    ],
    ids=["list", "mapping"],
)
def test_a_set_value_left_open_is_said(override: str, message: str, tmp_path: Path) -> None:
    """`[q_proj, v_proj` (the ] lost) trained v_proj alone: read as the names '[q_proj' and 'v_proj'."""
    path = tmp_path / "spec.yaml"
    path.write_text(HEAD, encoding="utf-8")
    with pytest.raises(UserError) as caught:
        load_spec_file(path, [override])
    assert caught.value.message == message


def test_data_path_takes_files_separated_by_commas_unless_one_file_has_that_name(tmp_path: Path) -> None:
    """The Data page took `a.jsonl, b.jsonl` as two files and the spec and --set as one missing file; the page
    could not load a file named `a,b.jsonl` at all."""
    for name in ("a.jsonl", "b.jsonl", "c,d.jsonl"):
        (tmp_path / name).write_text('{"instruction": "x", "output": "y"}\n')
    path = tmp_path / "spec.yaml"
    path.write_text("model: /m\ndata: {path: 'a.jsonl, b.jsonl'}\n", encoding="utf-8")
    assert load_spec_file(path).data.path == [str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")]  # beside it
    assert load_spec_file(path, [f"data.path={tmp_path}/a.jsonl,{tmp_path}/b.jsonl"]).data.path == [
        f"{tmp_path}/a.jsonl", f"{tmp_path}/b.jsonl"]  # fmt: skip
    path.write_text("model: /m\ndata: {path: 'c,d.jsonl'}\n", encoding="utf-8")
    assert load_spec_file(path).data.path == str(tmp_path / "c,d.jsonl")


def test_an_empty_method_section_is_the_default_method(tmp_path: Path) -> None:
    """`method:` with nothing under it was refused: "method holds settings, … not None"."""
    path = tmp_path / "spec.yaml"
    path.write_text(HEAD + "method:\nobjective:\ntraining:\n", encoding="utf-8")
    spec = load_spec_file(path)
    assert (spec.method.name, spec.objective.name) == ("lora", "sft")
