"""DPH-RL on the verifiable sum task, set up as the authors' code (``seamoke/DPH-RL``) does.

    python -m experiments.main --config=configs/dphrl_toy.py --workdir=runs/dphrl_toy

16 prompts ask for 4 tokens summing to 2..9 (two prompts per sum); the initial policy has
mastered the prompts with ``c mod 4`` in {0, 1}. Even prompts are the RL pool (split by ``pi_0``'s
4/4-correct rule into GRPO's and the penalty's prompts), odd ones held out (validation / test).
``--config.divergence=none|forward_kl|js|reverse_kl|alpha`` (``none`` is GRPO alone); the penalty
weight is ``--config.eta`` (tuned per divergence in ``results/lm.md``). The JS penalty is the
catalog's JS, half the official ``js_low_var`` ``g``: fdiv's eta = 2 x the official weight.
fdiv's settings before 2026-12: ``--config.prompt_split=shared --config.sample_filter=all
--config.grpo.ddof=0 --config.grpo.clip_high=0.2 --config.grpo.dual_clip=0
--config.grpo.minibatches=1 --config.penalty_clip=False``.
"""

from configs._lm_common import base_config


def get_config():
    c = base_config("lm_dphrl")
    c.length = 4
    c.divergence = "forward_kl"
    c.eta = 1.0
    c.num_prompts = 16
    c.num_targets = 8  # prompt c asks for target_offset + c mod num_targets
    c.target_offset = 2
    c.mastered_residues = (0, 1)  # pi_0 is fitted to correct answers where c mod 4 is one of these
    c.prompt_split = "separate"  # separate | shared
    c.sample_filter = "correct"  # correct | all
    c.presample = 4  # pi_0's answers per pool prompt for the perfect-prompt rule
    c.penalty_clip = True  # verl's low_var_kl clips (forward KL only)
    c.grpo = {"ddof": 1, "clip_low": 0.2, "clip_high": 0.28, "dual_clip": 3.0, "minibatches": 2}
    c.group_size = 16
    c.num_stored = 256
    c.eval_samples = 128
    c.pass_k = (1, 8, 32)
    c.train.batch_size = 64
    c.train.total_steps = 400
    return c
