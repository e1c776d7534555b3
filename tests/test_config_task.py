"""Task TOML loading and the pure-text task logic (no model needed)."""

from __future__ import annotations

import textwrap

import pytest

from promptdistill.config import TaskConfig, load_config
from promptdistill.errors import PromptDistillError
from promptdistill.task import NO_MATCH, NOT_IN_LABEL_SET, OK, Task

VALID = """
[task]
name = "lang"
user_template = "Classify the language.\\nText:\\n{text}"
answer_pattern = 'Final Answer:\\s*(\\w+)'
labels = ["en", "fr", "de"]
answer_mode = "choose"
answer_template = "Final Answer: {label}"
max_new_tokens = 12

[data]
inputs = "data/inputs.jsonl"
heldout_fraction = 0.25
seed = 7

[models]
teacher = "some-teacher"
device = "cpu"

[train]
learning_rate = 1e-3
lora_rank = 8
target_modules = ["q_proj", "v_proj"]
"""


def write(tmp_path, text, name="task.toml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text), encoding="utf-8")
    return p


def task_toml(**task_fields) -> str:
    """A minimal [task] table with the given fields (values written as TOML literals)."""
    lines = ["[task]"]
    for key, value in task_fields.items():
        lines.append(f"{key} = {value}")
    return "\n".join(lines) + "\n"


def load_error(tmp_path, text) -> PromptDistillError:
    p = write(tmp_path, text)
    with pytest.raises(PromptDistillError) as info:
        load_config(p)
    return info.value


# --------------------------------------------------------------------- config


def test_valid_file_loads(tmp_path):
    p = write(tmp_path, VALID)
    cfg = load_config(p)
    assert cfg.task.name == "lang"
    assert cfg.task.user_template == "Classify the language.\nText:\n{text}"
    assert cfg.task.system_prompt is None
    assert cfg.task.labels == ["en", "fr", "de"]
    assert cfg.task.answer_mode == "choose"
    assert cfg.task.max_new_tokens == 12
    assert cfg.data.heldout_fraction == 0.25
    assert cfg.data.seed == 7
    assert cfg.models.teacher == "some-teacher"
    assert cfg.models.device == "cpu"
    assert cfg.train.learning_rate == 1e-3
    assert cfg.train.lora_rank == 8
    assert cfg.train.target_modules == ["q_proj", "v_proj"]
    # untouched defaults survive
    assert cfg.train.batch_size == 8
    assert cfg.eval.include_base is True
    # relative paths resolve against the file's folder
    assert cfg.base_dir == tmp_path.resolve()
    assert cfg.resolve_path(cfg.data.inputs) == tmp_path.resolve() / "data" / "inputs.jsonl"


def test_int_accepted_for_float_field(tmp_path):
    cfg = load_config(write(tmp_path, task_toml(system_prompt='"p"') + "[train]\nlearning_rate = 1\n"))
    assert cfg.train.learning_rate == 1


def test_unknown_key_suggests_closest(tmp_path):
    err = load_error(tmp_path, task_toml(system_prompt='"p"') + "[train]\nlerning_rate = 1e-3\n")
    assert err.field == "train.lerning_rate"
    assert "train.lerning_rate" in str(err)
    assert "'learning_rate'" in str(err)
    assert str(tmp_path / "task.toml") in str(err)


def test_unknown_key_in_task_table_suggests_closest(tmp_path):
    err = load_error(tmp_path, task_toml(system_prompt='"p"', answer_patern="'(x)'"))
    assert err.field == "task.answer_patern"
    assert "'answer_pattern'" in str(err)


def test_unknown_section_suggests_closest(tmp_path):
    err = load_error(tmp_path, task_toml(system_prompt='"p"') + "[trian]\nepochs = 2\n")
    assert err.field == "trian"
    assert "'train'" in str(err)


@pytest.mark.parametrize(
    "section,key,value,field",
    [
        ("train", "epochs", '"three"', "train.epochs"),
        ("train", "learning_rate", '"fast"', "train.learning_rate"),
        ("train", "batch_size", "true", "train.batch_size"),
        ("train", "batch_size", "8.5", "train.batch_size"),
        ("data", "heldout_fraction", "true", "data.heldout_fraction"),
        ("eval", "include_base", '"yes"', "eval.include_base"),
        ("train", "target_modules", "[1, 2]", "train.target_modules"),
    ],
)
def test_wrong_type_names_field(tmp_path, section, key, value, field):
    err = load_error(tmp_path, task_toml(system_prompt='"p"') + f"[{section}]\n{key} = {value}\n")
    assert err.field == field
    assert f"'{field}'" in str(err)
    assert "expected" in err.message


def test_wrong_type_in_task_table(tmp_path):
    err = load_error(tmp_path, task_toml(system_prompt='"p"', labels='"en"'))
    assert err.field == "task.labels"
    assert "list" in err.message


def test_choose_mode_without_labels_refused(tmp_path):
    err = load_error(tmp_path, task_toml(system_prompt='"p"', answer_mode='"choose"'))
    assert err.field == "task.labels"
    assert "choose" in err.message


@pytest.mark.parametrize("pattern", ["'Final Answer: \\w+'", "'(Final) Answer: (\\w+)'"])
def test_regex_must_have_one_group(tmp_path, pattern):
    err = load_error(tmp_path, task_toml(system_prompt='"p"', answer_pattern=pattern))
    assert err.field == "task.answer_pattern"
    assert "group" in err.message


def test_invalid_regex_refused(tmp_path):
    err = load_error(tmp_path, task_toml(system_prompt='"p"', answer_pattern="'(unclosed'"))
    assert err.field == "task.answer_pattern"


def test_answer_template_regex_cannot_read_back(tmp_path):
    # The template writes "Label = en", the regex looks for "Final Answer: ...".
    err = load_error(
        tmp_path,
        task_toml(system_prompt='"p"', labels='["en", "fr"]', answer_template='"Label = {label}"'),
    )
    assert err.field == "task.answer_template"
    assert "'en'" in err.message


def test_answer_template_partial_read_back_refused(tmp_path):
    # \w+ reads "pt" from "pt-br": the label does not come back whole.
    err = load_error(tmp_path, task_toml(system_prompt='"p"', labels='["en", "pt-br"]'))
    assert err.field == "task.answer_template"
    assert "pt-br" in err.message


def test_answer_template_without_label_placeholder(tmp_path):
    err = load_error(tmp_path, task_toml(system_prompt='"p"', answer_template='"Final Answer: x"'))
    assert err.field == "task.answer_template"


def test_both_prompt_forms_refused(tmp_path):
    err = load_error(tmp_path, task_toml(system_prompt='"p"', user_template='"u {text}"'))
    assert err.field == "task"
    assert "system_prompt" in err.message and "user_template" in err.message


def test_neither_prompt_form_refused(tmp_path):
    err = load_error(tmp_path, task_toml(name='"x"'))
    assert err.field == "task"
    assert "system_prompt" in err.message and "user_template" in err.message


def test_user_template_without_text_placeholder(tmp_path):
    err = load_error(tmp_path, task_toml(user_template='"Classify: {input}"'))
    assert err.field == "task.user_template"
    assert "{text}" in err.message


def test_invalid_toml_names_line(tmp_path):
    err = load_error(tmp_path, '[task]\nsystem_prompt = "p"\nname = \n')
    assert err.path == str(tmp_path / "task.toml")
    assert "invalid TOML" in err.message
    # Python 3.14+ exposes the line as an attribute; older versions put it in the message.
    assert err.line == 3 or "line 3" in str(err)


def test_missing_task_file(tmp_path):
    with pytest.raises(PromptDistillError, match="not found"):
        load_config(tmp_path / "nope.toml")


# ----------------------------------------------------------------------- task


def closed_task(**kw) -> Task:
    fields = dict(system_prompt="Identify the language.", labels=["en", "fr", "de"])
    fields.update(kw)
    return Task(TaskConfig(**fields))


def test_parse_answer_match():
    t = closed_task()
    assert t.parse_answer("Let me think.\nFinal Answer: fr\n") == ("fr", OK)
    assert t.parse_answer("Final Answer:en") == ("en", OK)


def test_parse_answer_no_match():
    t = closed_task()
    assert t.parse_answer("I think it is French.") == (None, NO_MATCH)
    assert t.parse_answer("") == (None, NO_MATCH)


def test_parse_answer_not_in_label_set():
    t = closed_task()
    assert t.parse_answer("Final Answer: es") == (None, NOT_IN_LABEL_SET)
    # case matters: "EN" is not "en"
    assert t.parse_answer("Final Answer: EN") == (None, NOT_IN_LABEL_SET)


def test_parse_answer_open_label_set_accepts_anything():
    t = Task(TaskConfig(system_prompt="p", labels=[]))
    assert not t.closed
    assert t.parse_answer("Final Answer: klingon") == ("klingon", OK)
    assert t.parse_answer("Final Answer: es") == ("es", OK)
    assert t.parse_answer("no answer here") == (None, NO_MATCH)


def test_parse_answer_custom_pattern():
    t = Task(TaskConfig(system_prompt="p", answer_pattern=r"<label>(.*?)</label>", labels=["yes", "no"],
                        answer_template="<label>{label}</label>"))
    assert t.parse_answer("sure <label>no</label> done") == ("no", OK)
    assert t.parse_answer("<label>maybe</label>") == (None, NOT_IN_LABEL_SET)


def test_teacher_messages_system_prompt_form():
    t = closed_task(system_prompt="You classify languages.")
    assert t.teacher_messages("Bonjour") == [
        {"role": "system", "content": "You classify languages."},
        {"role": "user", "content": "Bonjour"},
    ]
    assert t.student_messages("Bonjour") == [{"role": "user", "content": "Bonjour"}]


def test_teacher_messages_user_template_form():
    t = closed_task(system_prompt=None, user_template="Classify this.\nText:\n{text}\nAnswer now.")
    assert t.teacher_messages("Hallo Welt") == [
        {"role": "user", "content": "Classify this.\nText:\nHallo Welt\nAnswer now."}
    ]
    assert t.student_messages("Hallo Welt") == [{"role": "user", "content": "Hallo Welt"}]


@pytest.mark.parametrize(
    "text",
    [
        "{text}",
        "say {text} twice {text}",
        "{label} {0} {} {{text}}",
        "json: {\"a\": 1}",
        "}{",
        "back\\slash \\1 \\g<0>",
    ],
)
def test_input_substituted_literally(text):
    template = "Rules {with braces} and {0}.\nText:\n{text}\nEnd {}."
    t = closed_task(system_prompt=None, user_template=template)
    (msg,) = t.teacher_messages(text)
    content = msg["content"]
    head, tail = "Rules {with braces} and {0}.\nText:\n", "\nEnd {}."
    assert content == head + text + tail
    assert content.startswith(head) and content.endswith(tail)
    assert content[len(head): len(content) - len(tail)] == text
    # system-prompt form: the input is the user message verbatim
    s = closed_task(system_prompt="Prompt with {text} inside")
    assert s.teacher_messages(text) == [
        {"role": "system", "content": "Prompt with {text} inside"},
        {"role": "user", "content": text},
    ]


def test_target_reply_normalized():
    t = closed_task(student_target="normalized")
    assert t.target_reply("  blah blah\nFinal Answer:   fr  \n", "fr") == "Final Answer: fr"
    t2 = closed_task(student_target="normalized", answer_template="The answer is: {label}",
                     answer_pattern=r"answer is:\s*(\w+)")
    assert t2.target_reply("whatever", "de") == "The answer is: de"


def test_target_reply_teacher_reply():
    t = closed_task(student_target="teacher_reply")
    assert t.target_reply("  Reasoning...\nFinal Answer: fr  \n", "fr") == "Reasoning...\nFinal Answer: fr"


def test_fingerprint_tracks_prompt():
    a = closed_task()
    assert a.fingerprint() == closed_task().fingerprint()
    assert a.fingerprint() != closed_task(system_prompt="Another prompt.").fingerprint()
    assert a.fingerprint() != closed_task(labels=["en", "fr"]).fingerprint()


def test_answer_template_read_back_checked_for_open_label_set(tmp_path):
    # No closed label set, student_target = "normalized" (the default): the student
    # is trained to answer "Label = <label>", which the regex can never read, so
    # every student answer would be unparseable. The file must be refused.
    err = load_error(tmp_path, task_toml(system_prompt='"p"', answer_template='"Label = {label}"'))
    assert err.field == "task.answer_template"


def test_negative_max_grad_norm_refused(tmp_path):
    err = load_error(tmp_path, task_toml(system_prompt='"p"') + "[train]\nmax_grad_norm = -1\n")
    assert err.field == "train.max_grad_norm"
    assert load_config(write(tmp_path, task_toml(system_prompt='"p"') + "[train]\nmax_grad_norm = 0\n")).train.max_grad_norm == 0


@pytest.mark.parametrize("name", sorted(__import__("promptdistill.config", fromlist=["_RANGES"])._RANGES))
def test_every_range_refuses_just_outside_and_names_the_field(name):
    """The range table is the one place single-field bounds live: each bound refuses the
    value just past it, with the field named, and an inclusive bound accepts the bound itself."""
    from promptdistill.config import _RANGES, config_from_dict

    section, key = name.split(".")
    low, high, low_in, high_in = _RANGES[name]
    # task.samples > 1 needs sampling; no other bound depends on another field
    base = {"task": {"system_prompt": "p", "temperature": 0.7}}
    step = 1 if isinstance(getattr(config_from_dict(base), section).__dict__[key], int) else 1e-6
    for bound, inclusive, outside in ((low, low_in, -step), (high, high_in, step)):
        if bound is None:
            continue
        raw = {s: dict(v) for s, v in base.items()}
        raw.setdefault(section, {})[key] = bound + outside if inclusive else bound
        with pytest.raises(PromptDistillError) as info:
            config_from_dict(raw)
        assert info.value.field == name
        if inclusive:
            raw[section][key] = bound
            assert getattr(getattr(config_from_dict(raw), section), key) == bound


def test_settings_hash_every_key():
    """Fingerprints cover every task, train and eval setting, so any change of one is seen
    on resume. Left out: train.report_to (where metrics are mirrored),
    train.gradient_checkpointing (the same gradients, recomputed), train.autocast
    (recorded as resolved on the machine by the checkpoint settings:
    test_training_precision.py) and train.reply_filter when it is off."""
    import dataclasses

    from promptdistill.config import EvalConfig, TaskConfig, TrainConfig, eval_settings, task_settings, training_settings

    assert set(task_settings(TaskConfig())) == {f.name for f in dataclasses.fields(TaskConfig)}
    assert set(eval_settings(EvalConfig())) == {f.name for f in dataclasses.fields(EvalConfig)}
    assert set(training_settings(TrainConfig())) == {f.name for f in dataclasses.fields(TrainConfig)} - {
        "report_to", "gradient_checkpointing", "autocast", "reply_filter"}
    assert training_settings(TrainConfig(reply_filter="checks"))["reply_filter"] == "checks"
    assert training_settings(TrainConfig(balance="answers")) != training_settings(TrainConfig())
    assert eval_settings(EvalConfig(teacher_resamples=2)) != eval_settings(EvalConfig())
    assert task_settings(TaskConfig(reply_prefix="x")) != task_settings(TaskConfig())


# ------------------------------------------------------------------ text tasks


def test_text_task_loads_and_reads_the_whole_reply(tmp_path):
    cfg = load_config(write(tmp_path, task_toml(system_prompt='"Be terse."', reply_format='"text"', truncated_replies='"keep"')))
    t = Task(cfg.task)
    assert t.text_reply and t.keeps_truncated()
    assert t.parse_answer("<think>plan</think>  Hello there.\n") == ("Hello there.", OK)
    assert t.parse_answer("  \n") == (None, "empty_reply")
    # The student learns the whole reply, whatever student_target says (it names a label's form).
    assert t.target_reply("<think>plan</think> Hello there.", "Hello there.") == "Hello there."


@pytest.mark.parametrize("fields, field, words", [
    (dict(labels='["a", "b"]'), "task.labels", "no label set"),
    (dict(answer_mode='"choose"'), "task.answer_mode", 'needs answer_mode = "generate"'),
    (dict(answer_pattern="'Reply: (.*)'"), "task.answer_pattern", "reads no answer"),
    (dict(answer_template='"Reply: {label}"'), "task.answer_template", "reads no answer"),
    (dict(samples=3, temperature=0.7), "task.samples", "text reply has none"),
    (dict(min_confidence=0.5), "task.min_confidence", "text reply has none"),
    (dict(truncated_replies='"sometimes"'), "task.truncated_replies", "reject, keep"),
])
def test_text_task_refuses_label_settings_in_one_line(tmp_path, fields, field, words):
    err = load_error(tmp_path, task_toml(system_prompt='"p"', reply_format='"text"', **fields))
    assert err.field == field and words in err.message and "\n" not in str(err)


def test_truncated_replies_applies_to_text_tasks_only(tmp_path):
    err = load_error(tmp_path, task_toml(system_prompt='"p"', truncated_replies='"keep"'))
    assert err.field == "task.truncated_replies" and "reply_format" in err.message


def test_balance_is_refused_for_a_text_task(tmp_path):
    err = load_error(tmp_path, task_toml(system_prompt='"p"', reply_format='"text"') + '[train]\nbalance = "answers"\n')
    assert err.field == "train.balance"


def test_conversation_messages_for_teacher_and_student():
    convo = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"}]
    t = closed_task(system_prompt="Be kind.")
    assert t.teacher_messages(convo) == [{"role": "system", "content": "Be kind."}] + convo
    assert t.student_messages(convo) == convo and t.student_messages(convo) is not convo
    # With a user template, the prompt wraps the turn to answer; the history stays as it was.
    t = closed_task(system_prompt=None, user_template="Classify:\n{text}\nNow.")
    assert t.teacher_messages(convo) == convo[:2] + [{"role": "user", "content": "Classify:\nBye\nNow."}]
    assert t.teacher_messages("Bye") == t.teacher_messages([{"role": "user", "content": "Bye"}])
