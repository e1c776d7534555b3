"""Training the student: the recipe (recipe.py) and what it composes.

    recipe        train_student(cfg, records, run_dir): LoRA fine-tuning without the prompt,
                  as a DistillationRecipe in named steps
    data          what the loop consumes: items per loss, step groups, micro-batches
    losses        sft and kd losses (static functions with documented shapes)
    onpolicy      on-policy distillation: the student samples, the teacher grades
    checkpoint    resumable checkpoints (adapter, optimiser, scheduler, RNG)
    distributed   torchrun / accelerate launch: shards and gradient sums
    tracking      optional TensorBoard / W&B mirrors of metrics.jsonl
"""
