"""What a run reads first, checked before its folder is made and before torch imports: a typo in the model's or
the data's path was said only after a run folder "failed at step 0" had joined the run history."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from adapter_studio.engine.spec import RunSpec


def check_inputs(spec: RunSpec) -> str:
    """The data's format (data.format, or read from its first rows); a UserError for a model or data file that is
    not there or cannot be read (empty, not UTF-8, no such column), or an architecture without weights."""
    from adapter_studio.engine.data.examples import data_format
    from adapter_studio.engine.data.files import data_files
    from adapter_studio.engine.models.hub_ids import require_weights
    from adapter_studio.engine.models.loading import resolve_source

    require_weights(spec.model.source, resolve_source(spec.model.source))
    data_files(spec.data.path)  # data_format reads no file where data.format is given
    fmt = data_format(spec.data)
    if spec.data.eval_path:
        data_files(spec.data.eval_path, "data.eval_path")
    return fmt
