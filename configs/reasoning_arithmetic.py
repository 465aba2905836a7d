"""Reasoning distillation on checkable arithmetic (experiments/lm_reasoning.py).

    python -m experiments.main --config=configs/reasoning_arithmetic.py --workdir=runs/reasoning

A base student learns the problems in the ``equation`` style, a larger teacher in the ``words``
style; the distilled student (from the base student) learns the teacher's sampled solutions.
``--config.selection.method=random|length|divergence|teacher_count --config.selection.budget=0.25``
distils on a selected quarter of the teacher's samples.
"""

from ml_collections import ConfigDict

from configs._common import distributed_config, train_config


def get_config():
    c = ConfigDict()
    c.experiment = "lm_reasoning"
    c.max_steps = 4
    c.train_lengths = (1, 2, 3)  # steps per problem in training and the in-distribution tests
    c.novel_lengths = (4,)  # held out: longer chains than any seen in training
    c.student_style, c.teacher_style = "equation", "words"
    c.data_seed = 0  # the problem sets (the same for every training seed)
    c.num_train = 20_000
    c.num_distill_prompts = 1_000
    c.candidates = 2  # teacher samples per distillation prompt (the selection pool: 2,000)
    c.sample_temperature = 1.0
    c.num_eval = 200  # problems per evaluation set (valid, test, novel)
    c.student = {"dim": 32, "num_heads": 2, "num_layers": 2}
    c.teacher = {"dim": 64, "num_heads": 4, "num_layers": 3}
    c.base_steps = 1000
    c.teacher_steps = 1000
    c.learning_rate = 1e-3
    # selection: all | random | length | divergence | teacher_count; budget: the fraction kept
    c.selection = {"method": "all", "budget": 1.0, "divergence": "kl", "reduce": "mean"}
    c.provenance = {"alpha": 0.05, "beta": 0.1}  # the four-way rule's thresholds (probabilities)
    c.stages_seed = 0  # seeds the base student, the teacher, its samples (train.seed: the run)
    c.stages_dir = ""  # where the base student, the teacher and its samples live ("": workdir)
    c.train = train_config(
        total_steps=400, batch_size=64, eval_batch_size=200, log_every=100, eval_every=200,
        checkpoint_every=200, progress=False,
    )  # fmt: skip
    c.distributed = distributed_config()
    return c
