"""Inputs from the data formats of the Hugging Face ecosystem: Parquet, Arrow,
`datasets.save_to_disk` folders, `hf://datasets/ORG/NAME[:split]` and, from
Python, a `datasets.Dataset`.

Each row becomes the same dict a JSONL line parses to (`text`, `messages`,
`id`, `label`, extra columns), with the column names of data.text_column,
data.messages_column, data.id_column and data.label_column mapped onto
those keys, so records.py's one per-record check applies to every format:
a bad row is reported with its source and row number (counted from 1, as
lines are) like a bad JSONL line.

Files are read with pyarrow (no copy into the datasets cache); folders and
hub datasets with `datasets` itself (`load_from_disk`, `load_dataset`), which
honours HF_HUB_OFFLINE: offline, a hub dataset is read from the local cache
or refused in one line. Both come with the `datasets` extra.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import PromptDistillError

HF_DATASETS = "hf://datasets/"
FILE_SUFFIXES = (".parquet", ".arrow")
# The keys a record holds, and the data.* setting naming the column each is read from.
COLUMN_SETTINGS = {"text": "text_column", "messages": "messages_column", "id": "id_column", "label": "label_column"}
_INSTALL = "pip install 'promptdistill[datasets]'"


def is_hub_dataset(source) -> bool:
    return isinstance(source, str) and source.startswith(HF_DATASETS)


def is_dataset_source(source) -> bool:
    """A source this module reads (rather than the JSONL/CSV/text readers): a hub
    dataset, a .parquet or .arrow file, or a folder (only one `save_to_disk` wrote
    is read: check_input_source says so of any other)."""
    if is_hub_dataset(source):
        return True
    p = Path(source)
    return p.suffix.lower() in FILE_SUFFIXES or p.is_dir()


def _is_saved_dataset(p: Path) -> bool:
    return p.is_dir() and ((p / "state.json").is_file() or (p / "dataset_dict.json").is_file())


def input_location(cfg, value):
    """data.inputs (or another input setting) as a reader takes it: a hub address as
    given, a path relative to the task file's folder made absolute."""
    return value if is_hub_dataset(value) else cfg.resolve_path(value)


def local_path(source):
    """A source as the path checks (io.check_paths) compare it: None for a hub dataset (nothing local to overwrite)."""
    return None if is_hub_dataset(source) else source


def columns_of(data) -> dict[str, str]:
    """The column mapping of a DataConfig: record key -> column name (the unset ones left out)."""
    return {key: getattr(data, setting) for key, setting in COLUMN_SETTINGS.items() if getattr(data, setting, None)}


def check_input_source(source, what: str = "input file"):
    """An input source that can be read, checked before anything is written: a
    file that exists (io.check_file), a `save_to_disk` folder, or a hub address
    (well formed; offline, present in the local cache). Returns it (a Path, or the
    hub address as a string)."""
    from .io import check_file

    if is_hub_dataset(source):
        _hub_address(source)
        _require_datasets(source)
        return source
    p = Path(source)
    if p.is_dir() and _is_saved_dataset(p):
        _require_datasets(p)
        return p
    if p.is_dir():
        raise PromptDistillError(f"{what} is a folder, expected a file or a folder written by datasets' save_to_disk "
                                 "(state.json or dataset_dict.json in it)", path=p)
    p = check_file(p, what)
    if p.suffix.lower() in FILE_SUFFIXES:
        _require_datasets(p)
    return p


def dataset_rows(source, columns: dict[str, str] | None = None):
    """(row number from 1, record dict) for every row of a dataset source (see is_dataset_source),
    or of a `datasets.Dataset` object, the columns renamed per `columns`."""
    table = _read(source)
    mapping = _check_columns(table.column_names, columns or {}, source)
    for n, row in enumerate(_rows(table), start=1):
        yield n, rename_fields({k: _json_value(v) for k, v in row.items()}, mapping)


def _json_value(value):
    """A cell as JSON holds it: Arrow's dates, times, decimals and bytes become their text
    (an extra column is carried into every record written, as JSON)."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def rename_fields(row: dict, columns: dict[str, str]) -> dict:
    """A record with its mapped columns under the record keys (text, messages, id,
    label); a column of a record key's name that another column replaces is kept as an extra."""
    if not columns:
        return row
    taken = set(columns.values())
    out = {key: row[column] for key, column in columns.items() if column in row}
    for name, value in row.items():
        if name in taken:
            continue
        out[f"source_{name}" if name in out or name in columns else name] = value
    return out


def source_name(source) -> str:
    """How errors name a source: its path or address, or '<datasets.Dataset>' for an object."""
    return str(source) if isinstance(source, (str, Path)) else "<datasets.Dataset>"


def _check_columns(names: list[str], columns: dict[str, str], source) -> dict[str, str]:
    for key, column in columns.items():
        if column not in names:
            shown = ", ".join(names[:12]) + (" ..." if len(names) > 12 else "")
            raise PromptDistillError(f"no column {column!r} (data.{COLUMN_SETTINGS[key]}); the columns are: {shown}",
                                     path=source_name(source), field=f"data.{COLUMN_SETTINGS[key]}")
    if "text" not in columns and "messages" not in columns and "text" not in names and "messages" not in names:
        shown = ", ".join(names[:12]) + (" ..." if len(names) > 12 else "")
        raise PromptDistillError(f"no 'text' or 'messages' column (columns: {shown}); name the input column with "
                                 "data.text_column or data.messages_column", path=source_name(source), field="data.text_column")
    return columns


def _rows(table):
    """The rows as plain Python dicts (a pyarrow Table or a datasets.Dataset), a batch at a time."""
    if hasattr(table, "to_batches"):
        for batch in table.to_batches(max_chunksize=1024):
            yield from batch.to_pylist()
    else:
        for start in range(0, len(table), 1024):
            batch = table[start:start + 1024]
            keys = list(batch)
            yield from (dict(zip(keys, values)) for values in zip(*(batch[k] for k in keys)))


def _read(source):
    """The whole source as a pyarrow Table (files) or a datasets.Dataset (folders, the hub, objects)."""
    if not isinstance(source, (str, Path)):
        if not (hasattr(source, "column_names") and hasattr(source, "__getitem__")):
            raise PromptDistillError(f"inputs must be a file path, an hf://datasets/ address or a datasets.Dataset, "
                                     f"got {type(source).__name__}")
        return source
    if is_hub_dataset(source):
        return _load_hub(source)
    p = Path(source)
    pa = _require_datasets(p)
    try:
        if p.is_dir():
            return _load_saved(p)
        if p.suffix.lower() == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(p)
        return _read_arrow(p, pa)
    except (OSError, pa.ArrowException) as e:
        raise PromptDistillError(f"cannot be read as {p.suffix.lower() or 'a dataset'} ({_first_line(e)})", path=p) from None


def _read_arrow(p: Path, pa):
    """An Arrow file in either of its layouts: the stream `save_to_disk` writes, or the random-access (Feather v2) file."""
    with pa.memory_map(str(p)) as f:
        try:
            return pa.ipc.open_stream(f).read_all()
        except pa.ArrowInvalid:
            f.seek(0)
            return pa.ipc.open_file(f).read_all()


def _load_saved(p: Path):
    import datasets

    loaded = datasets.load_from_disk(str(p))
    if isinstance(loaded, datasets.DatasetDict):
        splits = list(loaded)
        if len(splits) != 1:
            raise PromptDistillError(f"a DatasetDict with splits {', '.join(splits)}: pass the folder of one split "
                                     f"({p / splits[0]})", path=p)
        loaded = loaded[splits[0]]
    return loaded


def _hub_address(source: str) -> tuple[str, str]:
    """(ORG/NAME, split) of hf://datasets/ORG/NAME[:split]; the split defaults to train."""
    rest = source[len(HF_DATASETS):]
    name, _, split = rest.partition(":")
    parts = name.split("/")
    if len(parts) != 2 or not all(parts) or any(c.isspace() for c in rest):
        raise PromptDistillError(f"expected hf://datasets/ORG/NAME or hf://datasets/ORG/NAME:SPLIT, got {source!r}",
                                 field="data.inputs")
    return name, split or "train"


def _load_hub(source: str):
    """A hub dataset's split through datasets.load_dataset: downloaded when online, from
    the local cache when HF_HUB_OFFLINE is set (then one line if it is not cached)."""
    _require_datasets(source)
    import datasets
    from huggingface_hub import constants

    name, split = _hub_address(source)
    try:
        return datasets.load_dataset(name, split=split)
    except Exception as e:  # noqa: BLE001  (the hub, the cache and the builders raise many kinds; all end the same way)
        if constants.HF_HUB_OFFLINE or os.environ.get("HF_DATASETS_OFFLINE", "") not in ("", "0"):
            raise PromptDistillError(f"dataset {name!r} (split {split!r}) is not in the local cache and HF_HUB_OFFLINE is "
                                     "set: load it once online, or point data.inputs at a local copy", path=source) from None
        raise PromptDistillError(f"dataset {name!r} (split {split!r}) cannot be loaded: {_first_line(e)}", path=source) from None


def _require_datasets(where):
    try:
        import pyarrow as pa
        import pyarrow.ipc  # noqa: F401
    except ImportError:
        raise PromptDistillError(f"reading Parquet, Arrow or Hub datasets needs the datasets extra: {_INSTALL}",
                                 path=source_name(where)) from None
    if isinstance(where, str) or Path(where).is_dir():
        try:
            import datasets  # noqa: F401
        except ImportError:
            raise PromptDistillError(f"reading a datasets folder or a Hub dataset needs the datasets extra: {_INSTALL}",
                                     path=source_name(where)) from None
    return pa


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:300]
