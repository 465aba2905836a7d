"""SequenceMatch (chi^2 to the data/model mixture, with a backspace) on a Markov language with
forbidden transitions, against maximum likelihood.

    python -m experiments.main --config=configs/seqmatch_toy.py --workdir=runs/seqmatch_toy

``--config.divergence=chi2|kl`` (``kl`` is maximum likelihood; with ``--config.backspace_rate=0``
plain MLE, otherwise behaviour cloning of the backspace-augmented data).
"""

from configs._lm_common import base_config


def get_config():
    c = base_config("lm_seqmatch")
    c.divergence = "chi2"
    c.backspace_rate = 0.5
    # the chi^2 term's weight is 1/(4 alpha); alpha = 1 flattened the policy (10% unfinished)
    c.chi2_alpha = 10.0
    c.mle_weight = 1.0
    c.max_actions = 10
    c.num_train = 512
    c.num_forced = 64
    c.train.batch_size = 64
    c.train.total_steps = 500
    return c
