"""Evaluation: teacher (with the prompt), base and student (without) on held-out inputs.

    systems           each system answers in batches; accuracy, agreement, KL and latency per system
    latency           what one request costs each system, measured alike for every row
    fidelity          KL(teacher || system): label distributions or per reply token
    agreement         per-answer agreement with intervals, floors and a ceiling to read it against
    surface_baseline  the floor a classifier of the inputs' surface reaches
    offtask           what the student answers to inputs outside the task
    general_ability   what training cost the student on a built-in general check
    report            report.md, report.html and the text table
    plots             the report's pictures (matplotlib)
"""
