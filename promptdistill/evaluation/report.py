"""The report as text: report.md's markdown and the terminal's table, from report.json.

Every section is rendered here, from the plain data the statistics modules
put in report.json (systems.py, agreement.py, offtask.py,
general_ability.py, jsonreply.py), and every number goes through `fmt`, so
a rate reads the same in every table and sentence. run_report.py writes the
files (report.md with its pictures, report.html).
"""

from __future__ import annotations

from collections import Counter

from ..markdown import md_code, md_text
from ..task import UNPARSED
from .agreement import MAX_INTERVAL_WIDTH, MIN_COUNT, OTHER


def fmt(x, spec: str = ".1f") -> str:
    """A number as the report writes it, in Python's format `spec` (".1%": a share as a
    percentage); "-" when there is none."""
    return "-" if x is None else format(x, spec)


def interval(low: float, high: float, digits: int = 1) -> str:
    """A 95% interval of a share, as "31.3-83.2%"."""
    return f"{fmt(100 * low, f'.{digits}f')}-{fmt(high, f'.{digits}%')}"


_cell = md_text  # a label inside a pipe table cell


# ---------------------------------------------------------------- the whole report

def report_markdown(report: dict) -> str:
    """report.md without its pictures: the summary table, then every section the report holds."""
    s = report["systems"]
    api = report.get("student_api")
    served = f" at {md_code(api['url'])}, reached over its API," if api else ""
    out = [
        f"# Evaluation: {md_text(report['task'])}",
        "",
        f"{report['n_examples']} held-out inputs, none seen in training. Teacher: {md_code(report['models']['teacher'])} "
        f"with the prompt ({report['teacher_mode']} mode). Student: {md_code(report['models']['student'])}{served} without the prompt.",
        "",
        "| system | prompt | accuracy (gold) | agreement (teacher) | KL(teacher ‖ system) | parse rate | prompt tokens / request | median latency (ms) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, m in s.items():
        out.append(
            f"| {name} | {'yes' if m['uses_prompt'] else 'no'} | {fmt(m['accuracy'], '.1%')} | {fmt(m['agreement'], '.1%')} | "
            f"{fmt(m.get('kl_to_teacher'), '.3f')} | {fmt(m['parse_rate'], '.1%')} | {fmt(m['mean_prompt_tokens'])} | "
            f"{fmt(m['median_latency_ms'])} |"
        )
    source = report.get("heldout_source")
    if source == "synthetic":
        out += ["", "**The held-out inputs are synthetic** (written by the generator, see synth/inputs.synthesis.md): these "
                "numbers say how the student imitates the teacher on the generator's inputs, not on real ones."]
    elif source == "mixed":
        out += ["", "The held-out inputs are partly synthetic (written by the generator): read the numbers with that in mind."]
    elif source == "real" and report.get("synthetic_train"):
        out += ["", "The held-out inputs are real inputs only; synthetic inputs were used for training."]
    out += ["", "Agreement is measured on inputs where the teacher gave a label. Accuracy counts unparsed answers as wrong. "
            "KL is in nats (fidelity.py): over the label distribution for label-constrained tasks, per reply token otherwise."]
    if report.get("latency"):
        out.append(f"Latency: {report['latency']['how']}.")
    if (cost := report.get("api_cost")) is not None:
        per = cost["teacher_cost_per_request"]
        out.append(f"API cost: the prompted teacher used {cost['teacher_prompt_tokens_per_request']:.0f} prompt tokens per request"
                   + (f" and cost {per:.6f} per request (models.teacher_price_in/out)" if per is not None else "")
                   + ("; the student answers without the prompt" + (" through its own API (not priced here)." if api else " and without an API.")))
    if api and api["usage"].get("requests"):
        out.append(f"The student's API reported {api['usage']['prompt_tokens'] / api['usage']['requests']:.0f} prompt tokens per request "
                   f"over the {api['usage']['requests']} requests this evaluation sent it.")
    if (gap := _gap_line(report)) is not None:
        out.append(gap[:1].upper() + gap[1:] + ".")  # not capitalize(): it would lower "KL"
    if report.get("majority_label") is not None:
        out.append(f"Always answering the teacher's most frequent label ({md_code(report['majority_label'])}) would agree "
                   f"{fmt(report['majority_agreement'], '.1%')} of the time.")
    if (agreement := (report.get("prompt_effect") or {}).get("agreement")) is not None:
        out.append(f"Prompt effect recovered (agreement with the teacher; effect.py): {effect_text(agreement)}.")
    out.append("")
    out += text_reply_lines(report)
    out += json_lines(report)
    out += reference_lines(report)
    out += offtask_lines(report.get("offtask"))
    out += general_ability_lines(report.get("general_ability"))
    for name, m in s.items():
        labels = list(m["confusion"])
        if not labels:
            continue
        cols = labels + [UNPARSED]
        out += [f"## Confusion matrix: {name} (rows gold, columns predicted)", "", "| gold \\ pred | " + " | ".join(map(md_text, cols)) + " |",
                "|---" * (len(cols) + 1) + "|"]
        for g in labels:
            out.append(f"| **{md_text(g)}** | " + " | ".join(str(m["confusion"][g][c]) or "" for c in cols) + " |")
        out.append("")
    return "\n".join(out)


def results_table(report: dict) -> str:
    """The three-way table, as plain aligned text."""
    head = (f"{'system':<9} {'prompt':>6} {'accuracy':>9} {'agreement':>10} {'KL(T||.)':>9} {'parsed':>7} "
            f"{'tokens/req':>11} {'latency ms':>11}")
    lines = [head, "-" * len(head)]
    for name, m in report["systems"].items():
        lines.append(
            f"{name:<9} {'yes' if m['uses_prompt'] else 'no':>6} {fmt(m['accuracy'], '.1%'):>9} {fmt(m['agreement'], '.1%'):>10} "
            f"{fmt(m.get('kl_to_teacher'), '.3f'):>9} {fmt(m['parse_rate'], '.0%'):>7} {fmt(m['mean_prompt_tokens']):>11} "
            f"{fmt(m['median_latency_ms']):>11}"
        )
    if (gap := _gap_line(report)) is not None:
        lines.append(f"({gap})")
    if report.get("majority_label") is not None:
        lines.append(f"(always answering '{report['majority_label']}' would agree {fmt(report['majority_agreement'], '.1%')} with the teacher)")
    if (effect := report.get("prompt_effect")) is not None:
        if effect.get("overall") is not None:
            lines.append(f"prompt effect recovered (all checks): {effect_text(effect['overall'])}")
        elif effect.get("agreement") is not None:
            lines.append(f"prompt effect recovered (agreement): {effect_text(effect['agreement'])}")
        elif effect.get("unavailable"):
            lines.append(f"prompt effect recovered: not measured ({effect['unavailable']})")
    for name, j in ((report.get("judge") or {}).get("systems") or {}).items():
        lines.append(f"judge, {name} vs teacher: win {fmt(j['win']['rate'], '.1%')}, tie {fmt(j['tie']['rate'], '.1%')}, "
                     f"loss {fmt(j['loss']['rate'], '.1%')}; judge reliability {fmt(j['reliability']['rate'], '.1%')}")
    lines += json_summary_lines(report)
    if report.get("reference_points"):  # none for a text task: its replies are not labels
        lines += agreement_summary_lines(report["reference_points"])
    if off := report.get("offtask"):
        s = off["student"]
        lines.append(f"off-task ({off['n']} inputs): student agrees {fmt(s['agreement_teacher'], '.1%')} with the teacher, "
                     f"{fmt(s['agreement_base'], '.1%')} with its base; in the task's format: teacher {fmt(off['in_format']['teacher'], '.1%')}, "
                     f"base {fmt(off['in_format']['base'], '.1%')}, student {fmt(off['in_format']['student'], '.1%')}")
    if general := report.get("general_ability"):
        flag = "  ** dropped more than eval.general_max_drop **" if general["flagged"] else ""
        lines.append(f"general ability ({general['n']} checks): base {fmt(general['base_score'], '.1%')}, "
                     f"student {fmt(general['student_score'], '.1%')}, KL(base||student) {fmt(general['kl_base_student'], '.3f')}{flag}")
    return "\n".join(lines)


def _gap_line(report: dict) -> str | None:
    """The KL sentence of the report (its reason when there is no KL), without brackets
    or a full stop: the table puts it in brackets, report.md makes it a sentence."""
    f = report.get("fidelity") or {}
    if f.get("unavailable"):
        return f["unavailable"]
    if f.get("student_unavailable"):
        return f"KL(teacher ‖ student) {f['student_unavailable']}"
    if f.get("gap_closed") is None:
        return None
    effect = f.get("gap_closed_effect")
    span = f" [{_effect_interval(effect)}]" if effect and effect.get("low") is not None else ""
    return (f"prompt effect recovered (KL): the student closes {fmt(f['gap_closed'], '.1%')}{span} of the base-to-teacher gap: "
            f"KL {fmt(f['kl_base'], '.3f')} -> {fmt(f['kl_student'], '.3f')} nats, {f['kind']}")


# ---------------------------------------------------------------- free-text replies

def _effect_interval(e: dict) -> str:
    """A prompt effect's interval; its ends may leave [0, 1], so each carries its own sign and unit."""
    return f"{fmt(100 * e['low'])}% to {fmt(100 * e['high'])}%"


def effect_text(e: dict) -> str:
    """A prompt effect recovered (effect.py) as "62.0% (95% interval 41.0% to 80.0%)", or why it is undefined."""
    if e.get("recovered") is None:
        return f"undefined ({e['undefined']})"
    if e.get("low") is None:
        return f"{fmt(e['recovered'], '.1%')} ({e['undefined']})"
    return f"{fmt(e['recovered'], '.1%')} (95% interval {_effect_interval(e)})"


def _effect_cell(e: dict) -> str:
    """A prompt effect in a table cell: the value and its interval, or "undefined"."""
    if e.get("recovered") is None:
        return "undefined"
    return fmt(e["recovered"], ".1%") + (f" ({_effect_interval(e)})" if e.get("low") is not None else " (no interval)")


def text_reply_lines(report: dict) -> list[str]:
    """The free-text sections: prompt effect recovered (the headline), the reply checks per system, the judge."""
    out = []
    checks, effect, judge = report.get("checks"), report.get("prompt_effect") or {}, report.get("judge")
    if checks:
        systems = list(checks["checks"][0]["systems"])
        out += ["## Prompt effect and reply checks", ""]
        if effect.get("overall") is not None:
            e = effect["overall"]
            how = (f" = ({fmt(e['student'], '.1%')} - {fmt(e['base'], '.1%')}) / ({fmt(e['teacher'], '.1%')} - {fmt(e['base'], '.1%')})"
                   if e["recovered"] is not None else "")
            out += [f"**Prompt effect recovered: {effect_text(e)}**, on replies that pass every check: (student - base) / "
                    f"(teacher - base){how}. 0 is no better than the base without the prompt, 100% the teacher with it; the "
                    f"interval is a paired bootstrap over the held-out inputs ({effect['resamples']} resamples).", ""]
        elif effect.get("unavailable"):
            out += [f"Prompt effect recovered: not measured ({effect['unavailable']}).", ""]
        per_check = effect.get("checks") or {}
        with_effect = bool(per_check or effect.get("overall"))
        head = "| check | kind | " + " | ".join(systems) + (" | prompt effect recovered |" if with_effect else " |")
        out += ["Pass rate per check with its 95% interval (the rules of `[[eval.checks]]`; replychecks.py).", "",
                head, "|---" * (head.count("|") - 1) + "|"]
        for row in checks["checks"]:
            cells = [_with_interval(row["systems"][sysname]) for sysname in systems]
            e = per_check.get(row["name"]) or (effect.get("overall") if row["kind"] == "all" else None)
            tail = ([_effect_cell(e)] if e is not None else ["-"]) if with_effect else []
            name = f"**{md_text(row['name'])}**" if row["kind"] == "all" else md_text(row["name"])
            kind = "every check" if row["kind"] == "all" else row["kind"]
            out.append(f"| {name} | {kind} | " + " | ".join(cells + tail) + " |")
        out.append("")
    if judge:
        out += ["## Judge", "",
                f"{md_code(judge['judge'])}, with the system prompt, read each held-out conversation with a system's reply and "
                "the teacher's and said which follows the system prompt better, asked in both orders (judge.py). A verdict that "
                "flips with the order counts as a tie; reliability is the share of pairs whose verdict survived the swap "
                f"(identical replies are ties, not asked). The verdicts are in eval/{judge['file']}.", "",
                "| system vs teacher | win | tie | loss | win or tie | judge reliability |", "|---|---|---|---|---|---|"]
        for name, j in judge["systems"].items():
            out.append(f"| {name} | " + " | ".join(_with_interval(j[k]) for k in ("win", "tie", "loss", "win_or_tie", "reliability")) + " |")
        out.append("")
        if (low := [n for n, j in judge["systems"].items() if j["reliability"]["rate"] is not None and j["reliability"]["rate"] < 0.5]):
            out += [f"**The judge is unreliable** ({', '.join(low)}): most of its verdicts change when the replies swap places or cannot be read, "
                    "so its preferences say little; set eval.judge_model to a stronger judge.", ""]
    return out


def pictures_markdown(pictures: dict[str, str]) -> str:
    """The "Pictures" section for {title: png name}."""
    if not pictures:
        return ""
    lines = ["## Pictures", ""]
    for title, name in pictures.items():
        lines += [f"### {title}", "", f"![{title}]({name})", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------- JSON replies

def json_lines(report: dict) -> list[str]:
    """A markdown table of the JSON metrics of every system (empty for label tasks)."""
    systems = {name: m["json"] for name, m in report["systems"].items() if m.get("json")}
    if not systems:
        return []
    fields = list(next(iter(systems.values()))["field_agreement"])
    out = ["## JSON replies", "",
           "Valid: the reply holds a JSON object with every required field. Exact: equal to the teacher's on every field. "
           "Per field: equal to the teacher's value, over inputs where the teacher's reply is valid.", "",
           "| system | valid | exact | mean field | " + " | ".join(fields) + " |", "|---" * (4 + len(fields)) + "|"]
    for name, j in systems.items():
        cells = [fmt(j["validity"], ".1%"), fmt(j["exact_agreement"], ".1%"), fmt(j["mean_field_agreement"], ".1%")]
        cells += [fmt(j["field_agreement"][f], ".1%") for f in fields]
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    return out + [""]


def json_summary_lines(report: dict) -> list[str]:
    """One plain-text line per system with its JSON metrics (empty for label tasks)."""
    return [f"{name}: valid {fmt(m['json']['validity'], '.1%')}, exact agreement {fmt(m['json']['exact_agreement'], '.1%')}, "
            f"field agreement {fmt(m['json']['mean_field_agreement'], '.1%')}"
            for name, m in report["systems"].items() if m.get("json")]


# ---------------------------------------------------------------- agreement in context

_FLOOR_NAMES = {"majority": "majority answer", "surface": "surface baseline"}
_P_VALUE_NOTE = "p: exact McNemar test on the inputs where exactly one of the two agrees with the teacher."


def reference_lines(report: dict) -> list[str]:
    """Agreement in context: floors, ceiling, per-answer fidelity, confusion
    against the teacher; per field for JSON tasks."""
    section = report.get("reference_points")
    if not section:  # a text task: its replies are not labels to agree on
        return []
    out = agreement_report_lines(section)
    if section.get("ceiling") is None and report.get("teacher_mode") == "generate":
        out += ["No ceiling: in generate mode the teacher's self-consistency needs new sampled answers; "
                "set eval.teacher_resamples = K (with task.temperature > 0) to ask for K more per input.", ""]
    return out + json_agreement_report_lines(report.get("json_reference_points") or {})


def _with_interval(r: dict | None) -> str:
    """A rate and its 95% interval, as "60.0% (31.3-83.2%)"."""
    if not r or r["rate"] is None:
        return "-"
    return f"{fmt(r['rate'], '.1%')} ({interval(r['low'], r['high'])})"


def _interval_text(r: dict) -> str:
    return "-" if r["rate"] is None else interval(r["low"], r["high"])


def _comparison_phrase(floor_name: str, c: dict) -> str:
    """'beats the surface baseline by 10.1 points (p = 0.017)' and the like."""
    p = f"p = {fmt(c['p_value'], '.2g')}"
    if c["verdict"] == "beats":
        return f"beats the {floor_name} by {fmt(100 * c['difference'])} points ({p})"
    if c["verdict"] == "below":
        return f"is below the {floor_name} by {fmt(100 * -c['difference'])} points ({p})"
    return f"is not clearly different from the {floor_name} ({fmt(100 * c['difference'], '+.1f')} points, {p})"


def _ceiling_mode(ceiling: dict) -> str:
    if ceiling["mode"] == "samples":
        return f"{ceiling['k']} resamples per input"
    return "stored distribution"


def agreement_report_lines(section: dict, title: str = "Agreement in context", max_answers: int = 15) -> list[str]:
    """Markdown lines for an agreement.reference_points() section.

    Three parts: the reference table (floors, systems, ceiling) and one line
    per system saying whether it beats each floor and how close it comes to
    the ceiling; agreement per teacher answer with intervals and warnings;
    the confusion of each system against the teacher (at most `max_answers`
    rows and columns, the rest summed in "(other)").
    """
    floors, systems, ceiling = section["floors"], section["systems"], section.get("ceiling")
    intro = (f"Agreement with the teacher on the {section['n']} held-out inputs where its answer parsed, "
             "with Wilson 95% intervals. Macro: the mean over teacher answers of the agreement on that answer's inputs. "
             "Floor: always the teacher's most frequent answer")
    if floors.get("surface") is not None:
        intro += "; a character 1-3-gram logistic regression fitted on the training inputs' teacher labels"
    intro += "."
    if ceiling:
        intro += " Ceiling: how often a fresh draw from the teacher gives its own recorded answer."
    out = [f"## {title}", "", intro,
           "", "| reference | agreement (teacher) | 95% interval | macro agreement | share of ceiling | accuracy (gold), 95% interval |",
           "|---|---|---|---|---|---|"]
    maj = floors.get("majority")
    if maj:
        out.append(f"| floor: always {md_code(maj['label'])} | {fmt(maj['agreement']['rate'], '.1%')} | "
                   f"{_interval_text(maj['agreement'])} | {fmt(maj['macro_agreement'], '.1%')} | | |")
    surf = floors.get("surface")
    if surf is not None:
        if surf.get("available"):
            out.append(f"| floor: surface baseline | {fmt(surf['agreement']['rate'], '.1%')} | {_interval_text(surf['agreement'])} | "
                       f"{fmt(surf['macro_agreement'], '.1%')} | | |")
        else:
            out.append("| floor: surface baseline | unavailable | | | | |")
    for name, m in systems.items():
        out.append(f"| {name} | {fmt(m['agreement']['rate'], '.1%')} | {_interval_text(m['agreement'])} | "
                   f"{fmt(m['macro_agreement'], '.1%')} | {fmt(m['share_of_ceiling'], '.0%')} | {_with_interval(m.get('accuracy'))} |")
    if ceiling:
        out.append(f"| ceiling: teacher self-consistency ({_ceiling_mode(ceiling)}) | {fmt(ceiling['ceiling'], '.1%')} | | | 100% | |")
    out.append("")
    if surf is not None and not surf.get("available"):
        out += [f"Surface baseline unavailable: {surf.get('reason', 'not computed')}.", ""]
    verdicts = []
    for name, m in systems.items():
        parts = [_comparison_phrase(_FLOOR_NAMES.get(f, f), c) for f, c in m["against"].items() if c["n"]]
        if m["share_of_ceiling"] is not None:
            parts.append(f"reaches {fmt(m['share_of_ceiling'], '.0%')} of the teacher's self-consistency")
        if parts:
            verdicts.append(f"The {name} " + (", ".join(parts[:-1]) + " and " if len(parts) > 1 else "") + parts[-1] + ".")
    if verdicts:
        out += verdicts
        if any(m["against"] for m in systems.values()):
            out.append(_P_VALUE_NOTE)
        if ceiling:
            out.append(f"Self-consistency: {ceiling['formula']}, over {ceiling['n']} inputs. It is not a hard bound: a system that "
                       "always gives the teacher's most likely answer agrees more often than the teacher's own samples do (over 100%).")
        out.append("")
    if (warn := [n for n, m in systems.items() if m["agreement"]["warning"]]):
        out += ["Uncertain: " + "; ".join(f"{n}: {systems[n]['agreement']['warning']}" for n in warn) + ".", ""]
    out += _per_answer_lines(section, max_answers)
    for name, m in systems.items():
        out += _confusion_lines(name, m["confusion"], max_answers)
    return out


def _per_answer_lines(section: dict, max_answers: int) -> list[str]:
    systems = section["systems"]
    if not systems:
        return []
    names = list(systems)
    answers = [a for a in section["labels"] if next(iter(systems.values()))["per_answer"][a]["n"]]
    shown = sorted(answers, key=lambda a: -next(iter(systems.values()))["per_answer"][a]["n"])[:max_answers]
    shown = [a for a in answers if a in shown]  # keep the task's order
    out = ["### Agreement per teacher answer", "",
           "Each row: the inputs where the teacher gave that answer, and how often each system gave it too (95% interval).", "",
           "| teacher answer | n | " + " | ".join(names) + " | note |", "|---" * (len(names) + 3) + "|"]
    for a in shown:
        r = [systems[n]["per_answer"][a] for n in names]
        note = _answer_note(names, r)
        out.append(f"| **{_cell(a)}** | {r[0]['n']} | " + " | ".join(_with_interval(x) for x in r) + f" | {note} |")
    if len(answers) > len(shown):
        rest = sum(systems[names[0]]["per_answer"][a]["n"] for a in answers if a not in shown)
        out.append(f"| ({len(answers) - len(shown)} rarer answers) | {rest} |" + " |" * (len(names) + 1))
    out += [""]
    for n in names:
        m = systems[n]
        worst = ", ".join(f"{md_code(a)} {fmt(m['per_answer'][a]['rate'], '.0%')} of {m['per_answer'][a]['n']}"
                          for a in m["worst"])
        out.append(f"{n}: macro agreement {fmt(m['macro_agreement'], '.1%')}; worst answers: {worst or '-'}.")
    few = [a for a in answers if systems[names[0]]["per_answer"][a]["n"] < MIN_COUNT]
    if few:
        out.append(f"Too few inputs to tell (under {MIN_COUNT}): " + ", ".join(md_code(a) for a in few) + ". "
                   f"Rates whose 95% interval is wider than {fmt(100 * MAX_INTERVAL_WIDTH, '.0f')} points are marked in the note column.")
    return out + [""]


def _answer_note(names: list[str], rates: list[dict]) -> str:
    """The warning of one answer's row: its small count once, else each system's too-wide interval."""
    if rates[0]["n"] < MIN_COUNT:
        return rates[0]["warning"]
    return "; ".join(f"{n}: {r['warning']}" for n, r in zip(names, rates) if r["warning"])


def _confusion_lines(name: str, confusion: dict, max_answers: int) -> list[str]:
    rows = [r for r in confusion if sum(confusion[r].values())]
    if not rows:
        return []
    totals = Counter()
    for r in rows:
        totals.update({c: v for c, v in confusion[r].items() if c != UNPARSED})
    # The data's own OTHER row and column (beyond agreement.MAX_CONFUSION) go with the rest not shown.
    named = [r for r in rows if r != OTHER]
    kept_rows = sorted(named, key=lambda r: -sum(confusion[r].values()))[:max_answers]
    kept_rows = [r for r in named if r in kept_rows]
    # Columns: the shown teacher answers (a zero on the diagonal says something),
    # then the system's other answers, most frequent first, up to max_answers.
    foreign = sorted((c for c in totals if totals[c] and c not in kept_rows and c != OTHER), key=lambda c: -totals[c])
    kept_cols = set(kept_rows) | set(foreign[:max(0, max_answers - len(kept_rows))])
    cols = [c for c in next(iter(confusion.values())) if c in kept_cols]
    other = any(totals[c] for c in totals if c not in kept_cols)
    head = cols + ([OTHER] if other else []) + [UNPARSED]
    out = [f"### Confusion: {name} against the teacher (rows teacher answer, columns {name} answer)", "",
           "| teacher \\ " + name + " | " + " | ".join(_cell(c) for c in head) + " |", "|---" * (len(head) + 1) + "|"]
    for r in kept_rows:
        cells = [confusion[r][c] for c in cols]
        if other:
            cells.append(sum(v for c, v in confusion[r].items() if c not in kept_cols and c != UNPARSED))
        cells.append(confusion[r][UNPARSED])
        out.append(f"| **{_cell(r)}** | " + " | ".join(str(v) for v in cells) + " |")
    if len(kept_rows) < len(rows):
        hidden = sum(sum(confusion[r].values()) for r in rows if r not in kept_rows)
        out.append(f"(rarer teacher answers not shown: {hidden} inputs)")
    return out + [""]


def agreement_summary_lines(section: dict) -> list[str]:
    """Plain-text lines for results_table: per system, its agreement with
    its interval, its macro agreement, and the floors and ceiling it is read against."""
    floors, ceiling = section["floors"], section.get("ceiling")
    refs = []
    if (maj := floors.get("majority")):
        refs.append(f"majority {fmt(maj['agreement']['rate'], '.1%')}")
    if (surf := floors.get("surface")) is not None:
        refs.append(f"surface baseline {fmt(surf['agreement']['rate'], '.1%')}" if surf.get("available")
                    else "surface baseline unavailable")
    if ceiling:
        refs.append(f"teacher self-consistency {fmt(ceiling['ceiling'], '.1%')}")
    out = []
    for name, m in section["systems"].items():
        line = (f"{name}: agreement {fmt(m['agreement']['rate'], '.1%')} (95% {_interval_text(m['agreement'])}), "
                f"macro {fmt(m['macro_agreement'], '.1%')}")
        if refs:
            line += "; against " + ", ".join(refs)
        if m["agreement"]["warning"]:
            line += f" [{m['agreement']['warning']}]"
        out.append(line)
    return out


def json_agreement_report_lines(sections: dict[str, dict]) -> list[str]:
    """Markdown for agreement.json_reference_points(): one row per field with its floors,
    systems and the student's margin over the surface baseline."""
    if not sections:
        return []
    names = list(next(iter(sections.values()))["systems"])
    out = ["## JSON fields in context", "",
           "Per field: agreement with the teacher's value, over inputs where the teacher's reply is valid "
           "(an invalid reply disagrees on every field); the floors are fitted per field.", "",
           "| field | majority | surface baseline | " + " | ".join(names) + " | macro (" + " / ".join(names) + ") |",
           "|---" * (len(names) + 4) + "|"]
    notes = []
    for f, s in sections.items():
        maj, surf = s["floors"].get("majority"), s["floors"].get("surface")
        surf_text = "-" if surf is None else (fmt(surf["agreement"]["rate"], ".1%") if surf.get("available") else "unavailable")
        cells = [fmt(maj["agreement"]["rate"], ".1%") if maj else "-", surf_text]
        cells += [_with_interval(s["systems"][n]["agreement"]) for n in names]
        cells.append(" / ".join(fmt(s["systems"][n]["macro_agreement"], ".1%") for n in names))
        out.append(f"| {_cell(f)} | " + " | ".join(cells) + " |")
        if surf is not None and surf.get("available") and surf.get("note"):
            notes.append(f"{md_text(f)}: {surf['note']}")
        for n in names:
            c = s["systems"][n]["against"].get("surface")
            if c and c["n"]:
                notes.append(f"{md_text(f)}: the {n} " + _comparison_phrase("surface baseline", c) + ".")
    if notes:
        out += [""] + notes + [_P_VALUE_NOTE]
    return out + [""]


# ---------------------------------------------------------------- off the task

def offtask_lines(section: dict | None) -> list[str]:
    """The "Off-task inputs" section (offtask.py's summary)."""
    if not section:
        return []
    s, b, in_format = section["student"], section["base"], section["in_format"]
    out = ["## Off-task inputs", "",
           f"{section['n']} inputs the prompt is not about (`{section['inputs']}`): greetings, unrelated questions, code, "
           "mixed or near-empty text. Does the student answer them like the teacher with the prompt, like its base, or neither?", "",
           "| system | replies in the task's format | agreement with teacher | KL(teacher ‖ system) |", "|---|---|---|---|",
           f"| teacher | {fmt(in_format['teacher'], '.1%')} | - | - |",
           f"| base | {fmt(in_format['base'], '.1%')} | {fmt(b['agreement_teacher'], '.1%')} | {fmt(b['kl_teacher'], '.3f')} |",
           f"| student | {fmt(in_format['student'], '.1%')} | {fmt(s['agreement_teacher'], '.1%')} | {fmt(s['kl_teacher'], '.3f')} |", "",
           f"Student against its base: agreement {fmt(s['agreement_base'], '.1%')} (same answer, or the same reply where neither "
           f"is in the task's format), KL(base ‖ student) "
           + (f"{s['kl_unavailable']}." if s.get("kl_unavailable") else f"{fmt(s['kl_base'], '.3f')} nats ({section['kind']}).")]
    if s["top_answer"] is not None:
        out.append(f"The student's most common off-task answer is `{s['top_answer']}` ({fmt(s['top_answer_share'], '.1%')} of inputs).")
    if s["agreement_teacher"] is not None and s["agreement_teacher"] < 0.5 and s["agreement_base"] < 0.5:
        out.append("**The student follows neither the teacher nor its base on most of these inputs**: it may have learned a "
                   "shortcut of the training distribution; eval/offtask_predictions.jsonl has the replies.")
    return out + [""]


def general_ability_lines(section: dict | None) -> list[str]:
    """The "General ability" section (general_ability.py's summary)."""
    if not section:
        return []
    span = lambda iv: "-" if iv is None else interval(*iv, digits=0)  # noqa: E731
    out = ["## General ability", "",
           f"Base and student, without any prompt, on promptdistill's built-in general check ({section['n']} prompts with "
           "checkable answers: arithmetic, short facts, format instructions, copying and reversing; general.py). "
           "A drop says what training cost the model off the task.", "",
           "| system | score | 95% interval |", "|---|---|---|",
           f"| base | {fmt(section['base_score'], '.1%')} | {span(section['base_interval'])} |",
           f"| student | {fmt(section['student_score'], '.1%')} | {span(section['student_interval'])} |", "",
           "| kind | checks | base | student |", "|---|---|---|---|"]
    out += [f"| {k} | {v['n']} | {fmt(v['base'], '.1%')} | {fmt(v['student'], '.1%')} |" for k, v in section["by_kind"].items()]
    out.append("")
    if section["kl_base_student"] is not None:
        out.append(f"Mean KL(base ‖ student) per token over the base's own replies: {fmt(section['kl_base_student'], '.3f')} nats "
                   "(0 = the student kept the base's behaviour on these prompts).")
    elif section.get("kl_unavailable"):
        out.append(f"KL(base ‖ student) per token: {section['kl_unavailable']}.")
    drop = section["drop"]
    if section["flagged"]:
        out.append(f"**General ability dropped by {fmt(100 * drop)} points** (more than eval.general_max_drop = "
                   f"{fmt(100 * section['max_drop'], '.0f')} points): checks lost: {', '.join(section['lost'])} "
                   "(eval/general_ability.jsonl has the replies). data.mix_general mixes the base's own answers into training to hold it.")
    elif drop is not None:
        out.append(f"Change from base to student: {fmt(100 * (section['student_score'] - section['base_score']), '+.1f')} points "
                   f"(within eval.general_max_drop = {fmt(100 * section['max_drop'], '.0f')} points).")
    return out + [""]
