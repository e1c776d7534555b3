"""Evaluation: teacher (with the prompt), base and student (without) on held-out inputs.

    systems       each system answers; accuracy, agreement, latency per system
    fidelity      KL(teacher || system): label distributions or per reply token
    report        report.md, report.html and the text table
    plots         the report's pictures (matplotlib)
"""
