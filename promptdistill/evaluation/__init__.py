"""Evaluation: teacher (with the prompt), base and student (without) on held-out inputs.

    systems           each system answers in batches (held-out and off-task alike); accuracy, agreement, KL, latency
    latency           what one request costs each system, measured alike for every row
    fidelity          KL(teacher || system): label distributions or per reply token
    agreement         per-answer agreement with intervals, floors and a ceiling to read it against
    surface_baseline  the floor a classifier of the inputs' surface reaches
    checks            pass rates per system of the task file's reply checks ([[eval.checks]], replychecks.py)
    effect            prompt effect recovered, (student - base) / (teacher - base), with a paired bootstrap interval
    judge             a judge (the teacher, with the prompt) compares replies in both orders; its reliability
    text_replies      a free-text evaluation's sections (checks, prompt effect, judge): one entry point
    offtask           what the student answers to inputs outside the task
    general_ability   what training cost the student on a built-in general check
    report            the report as text: report.md's sections and the terminal's table, one number formatter
    run_report        the run's report files: report.md with its pictures, report.html
    plots             the report's pictures (matplotlib)
"""
