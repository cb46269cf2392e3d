"""What a run reads first, checked before its folder is made and before torch imports: a typo in the model's or
the data's path was said only after a run folder "failed at step 0" had joined the run history."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from adapter_studio.engine.spec import RunSpec


def check_inputs(spec: RunSpec) -> str:
    """The data's format (data.format, or read from its first rows); a UserError for a model or data file that is
    not there or cannot be read (empty, not UTF-8, no such column, a format it is not in), an architecture without
    weights, an objective that cannot train on the data, or a GPU asked for that the machine does not have."""
    from adapter_studio.engine.data.examples import example_chunks
    from adapter_studio.engine.data.files import data_files
    from adapter_studio.engine.defaults import resolve_objective
    from adapter_studio.engine.models.hub_ids import require_weights
    from adapter_studio.engine.models.loading import resolve_source

    require_weights(spec.model.source, resolve_source(spec.model.source))
    data_files(spec.data.path)
    # The first chunk read even where data.format is given: a file not in that format is said here.
    fmt = next(iter(example_chunks(spec.data, spec.data.path))).format
    resolve_objective(spec, fmt).spec.objective.check_data(fmt)
    if spec.data.eval_path:
        data_files(spec.data.eval_path, "data.eval_path")
    if spec.model.device in ("cuda", "mps"):  # torch imported only then
        from adapter_studio.engine.training.devices import pick_device

        pick_device(spec.model.device)
    return fmt
