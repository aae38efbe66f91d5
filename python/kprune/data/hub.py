"""Task data from the `datasets` hub (optional dependency, network needed)."""
from __future__ import annotations

from ..errors import DataError
from ..tasks import TaskSpec
from .example import Example
from .records import _examples_from_records


def _load_hub(spec: TaskSpec, name: str, split: str) -> list[Example]:
    try:
        import datasets  # noqa: PLC0415  (optional dependency, imported only when asked for)
    except ImportError:
        raise DataError(
            f"{name!r} is neither a file nor a folder; reading it as a `datasets` hub name needs the "
            f"`datasets` package, which is not installed (pip install datasets), and network access"
        ) from None
    hub_split = {"dev": "validation", "dev_matched": "validation_matched",
                 "dev_mismatched": "validation_mismatched", "test_matched": "test_matched"}.get(split, split)
    if spec.name == "mnli" and hub_split in ("validation", "test"):
        hub_split += "_matched"
    is_glue = name.lower() in ("glue", "nyu-mll/glue")
    try:
        if is_glue:
            dataset = datasets.load_dataset(name, spec.name, split=hub_split)
        else:
            dataset = datasets.load_dataset(name, split=hub_split)
    except Exception as exc:  # noqa: BLE001  (network, unknown name, unknown split: all a DataError here)
        raise DataError(f"cannot load {name!r} (split {hub_split!r}) with `datasets`: {exc}") from exc
    names = list(dataset.column_names)
    source = f"`datasets` {name!r} split {hub_split!r}"
    records = ((i, record) for i, record in enumerate(dataset))
    return _examples_from_records(spec, records, names, source)
