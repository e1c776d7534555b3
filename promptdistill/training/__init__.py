"""Training the student: the recipe (recipe.py) and what it composes.

    recipe        train_student: LoRA fine-tuning without the prompt, in named steps
    losses        sft and kd losses (static functions with documented shapes)
    onpolicy      on-policy distillation: the student samples, the teacher grades
    checkpoint    resumable checkpoints (adapter, optimiser, scheduler, RNG)
    distributed   torchrun / accelerate launch: shards and gradient sums
    tracking      optional TensorBoard / W&B mirrors of metrics.jsonl
"""
