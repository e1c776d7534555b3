"""Readers stream, cap line length and end every malformed line in one error naming it;
integer flags are refused below their minimum.

A labels file with the teacher's top logprobs runs to gigabytes and is read at
every resume: the slow test here writes a few hundred MB of such records and
measures the peak memory (ru_maxrss of a fresh process) of what a resume reads
(the claim check, the torn-tail cut, done ids and summary) against the file size.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import script_records, write_jsonl, write_task_file
from promptdistill import records
from promptdistill.config import load_config
from promptdistill.errors import PromptDistillError
from promptdistill.io import drop_torn_last_line
from promptdistill.labeling import claim_labels_file, label_file, summarize_labels
from promptdistill.records import read_inputs, read_labeled

REPO = Path(__file__).resolve().parents[1]


def _refused(fn, *args, **kwargs) -> PromptDistillError:
    with pytest.raises(PromptDistillError) as err:
        fn(*args, **kwargs)
    assert "\n" not in str(err.value)
    return err.value


def test_deeply_nested_json_line_is_one_error(tmp_path):
    path = tmp_path / "inputs.jsonl"
    path.write_text('{"text": "fine"}\n{"text": "x", "extra": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    err = _refused(read_inputs, path)
    assert err.line == 2 and "nested too deeply" in str(err)
    labeled = tmp_path / "labels.jsonl"
    labeled.write_text('{"id": "1", "status": "ok", "x": ' + "{\"a\": " * 50_000 + "1" + "}" * 50_001 + "\n")
    err = _refused(read_labeled, labeled)
    assert err.line == 1 and "nested too deeply" in str(err)


def test_input_extra_fields_nest_at_most_the_cap(tmp_path):
    # parseable by json, but deep enough to fail later where records are written back
    path = tmp_path / "inputs.jsonl"
    path.write_text('{"text": "x", "extra": ' + "[" * 200 + "]" * 200 + "}\n")
    err = _refused(read_inputs, path)
    assert err.line == 1 and "nest deeper" in str(err)


def test_line_over_the_cap_is_refused_before_it_is_read_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(records, "MAX_LINE_BYTES", 1000)
    path = tmp_path / "inputs.txt"
    path.write_text("short\n" + "y" * 999 + "\n" + "z" * 1001 + "\n")
    err = _refused(read_inputs, path)
    assert err.line == 3 and "longer than" in str(err)
    path.write_text("short\n" + "y" * 999 + "\n")
    assert [len(e.text) for e in read_inputs(path)] == [5, 999]


def test_csv_field_over_131072_characters_reads(tmp_path):
    path = tmp_path / "inputs.csv"
    path.write_text("text,label\n" + "a" * 200_000 + ",x\nshort,y\n")
    assert [len(e.text) for e in read_inputs(path)] == [200_000, 5]
    assert __import__("csv").field_size_limit() == 131072  # the module's limit is put back


def test_csv_field_over_the_line_cap_is_one_error(tmp_path, monkeypatch):
    monkeypatch.setattr(records, "MAX_LINE_BYTES", 1000)
    path = tmp_path / "inputs.csv"
    path.write_text("text,label\nok,x\n" + "a" * 2000 + ",x\n")
    err = _refused(read_inputs, path)
    assert err.line == 3 and "invalid CSV" in str(err)


@pytest.mark.parametrize("body, line", [
    ('"never closed,pos\nb,neg\nc,neg\n', 2),      # the quote runs to the end of the file
    ('"closed later,pos\nb,neg\n"c",neg\n', 2),    # closed by the next quote, text after it
    ('"merged,pos\nb,neg\nc",neg\n', 2),           # closed before a comma: the lines between would be one input
])
def test_unbalanced_csv_quote_is_one_error(tmp_path, body, line):
    path = tmp_path / "inputs.csv"
    path.write_text("text,label\nfirst,pos\n" + body)
    err = _refused(read_inputs, path)
    assert err.line == line + 1, str(err)


def test_csv_quoted_field_with_line_breaks_still_reads(tmp_path):
    path = tmp_path / "inputs.csv"
    path.write_text('text,label\n"two\nlines",pos\nnext,neg\n')
    examples = read_inputs(path)
    assert [(e.text, e.line) for e in examples] == [("two\nlines", 2), ("next", 4)]


def test_deeply_nested_toml_is_one_error(tmp_path):
    path = tmp_path / "task.toml"
    path.write_text("[task]\nname = 'x'\nlabels = " + "[" * 100_000 + "]" * 100_000 + "\n")
    err = _refused(load_config, path)
    assert "nested too deeply" in str(err)


def test_torn_tail_is_cut_and_claimed_from_the_end(tmp_path):
    path = write_jsonl(tmp_path / "labels.jsonl", [r.to_json() for r in script_records(3)])
    path.with_name(path.name + ".meta.json").write_text('{"task_fingerprint": "x"}')  # labels are ours by their sidecar
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"messages": [{"role": "us')
    assert claim_labels_file(path, "--out") == path
    drop_torn_last_line(path)
    assert path.read_bytes() == whole
    path.write_bytes(whole + b"not a record")  # a tail that no kill of `label` leaves
    _refused(claim_labels_file, path, "--out")


def test_summary_counts_each_record_once(tmp_path):
    recs = [r.to_json() for r in script_records(5)]
    recs[0]["label"] = "cy"  # gold "la": the teacher got this one wrong
    out = write_jsonl(tmp_path / "labels.jsonl", recs[:4])
    rejects = write_jsonl(tmp_path / "labels.rejects.jsonl", [dict(recs[4], status="unparsed")])
    s = summarize_labels(out, rejects)
    assert (s["total"], s["labeled"], s["rejected"], s["by_status"]) == (5, 4, 1, {"ok": 4, "unparsed": 1})
    assert s["gold_count"] == 5 and s["teacher_accuracy"] == 4 / 5
    s = summarize_labels(out, rejects, ids=["0", "4"])
    assert (s["total"], s["teacher_accuracy"]) == (2, 1 / 2)


@pytest.mark.parametrize("flags, message", [
    (["--batch-size", "-1"], "--batch-size"),
    (["--batch-size", "0"], "--batch-size"),
    (["--limit", "-3"], "--limit"),
    (["--samples", "0"], "--samples"),
])
def test_negative_integer_flags_are_refused(tmp_path, capsys, flags, message):
    from promptdistill.cli import main

    task = write_task_file(tmp_path, "smollm2-135m-instruct", task=dict(name="t", labels=["a", "b"]))
    inputs = tmp_path / "in.txt"
    inputs.write_text("one\ntwo\n")
    with pytest.raises(SystemExit) as exit_:
        main(["label", str(task), "--inputs", str(inputs), "--out", str(tmp_path / "out.jsonl"), *flags])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {message}: expected an integer of at least" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt", "task.toml"]  # nothing written


def test_label_file_refuses_negative_counts_from_python(tmp_path):
    from promptdistill.overrides import load_task_config

    task = write_task_file(tmp_path, "smollm2-135m-instruct", task=dict(name="t", labels=["a", "b"]))
    inputs = tmp_path / "in.txt"
    inputs.write_text("one\ntwo\n")
    cfg = load_task_config(task)
    assert "limit" in str(_refused(label_file, cfg, inputs, tmp_path / "o.jsonl", limit=-3))
    assert "batch size" in str(_refused(label_file, cfg, inputs, tmp_path / "o.jsonl", batch_size=-1))
    assert not (tmp_path / "o.jsonl").exists()


_RESUME_READS = textwrap.dedent("""
    import json, resource, sys
    from pathlib import Path
    from promptdistill.labeling import LabelTally, claim_labels_file
    from promptdistill.io import drop_torn_last_line
    out = Path(sys.argv[1])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    claim_labels_file(out, "--out")
    drop_torn_last_line(out)
    tally = LabelTally().read(out, rejected=False)
    print(json.dumps({"before_kib": before, "peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                      "done": len(tally.done), "labeled": tally.summary(out, out)["labeled"]}))
""")


def write_big_labels(path: Path, mb: int, torn: bool = True) -> int:
    """Labeled records with top-logprob payloads of ~60 KB each, `mb` megabytes in all; returns the count."""
    top = [[[t, -0.5 - t / 100] for t in range(20)] for _ in range(200)]
    base = script_records(1)[0].to_json()
    payload = json.dumps({"token_ids": list(range(200)), "top": top})
    n = 0
    path.with_name(path.name + ".meta.json").write_text('{"task_fingerprint": "x"}')  # labels are ours by their sidecar
    with open(path, "w", encoding="utf-8") as f:
        while f.tell() < mb * 2**20:
            line = json.dumps(dict(base, id=str(n)))
            f.write(line[:-1] + ', "teacher_logprobs": ' + payload + "}\n")
            n += 1
        if torn:
            f.write('{"messages": [{"role": "user", "cont')
    return n


def measure_resume_reads(path: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", _RESUME_READS, str(path)], capture_output=True, text=True, timeout=1800,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


@pytest.mark.slow
def test_big_labels_file_resumes_in_memory_far_below_its_size(tmp_path):
    path = tmp_path / "labels.jsonl"
    n = write_big_labels(path, 200)
    size_kib = path.stat().st_size // 1024
    got = measure_resume_reads(path)
    assert got["done"] == got["labeled"] == n
    assert path.read_bytes()[-1:] == b"\n"  # the torn tail was cut
    grown = got["peak_kib"] - got["before_kib"]
    assert grown < size_kib / 20, (grown, size_kib)


def test_nul_in_task_name_is_one_line(tmp_path, capsys, monkeypatch):
    from promptdistill.cli import main

    task = tmp_path / "task.toml"
    task.write_text('[task]\nname = "demo\\u0000x"\nuser_template = "{text}"\n[data]\ninputs = "in.txt"\n')
    (tmp_path / "in.txt").write_text("one\ntwo\n")
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(task)]) == 2
    err = capsys.readouterr().err
    # refused where the task file is read, before any folder is named after it
    assert err.count("\n") == 1 and "task.name" in err and "control character" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt", "task.toml"]
