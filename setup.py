"""fdiv: f-divergences in JAX: generators, stable divergences, estimators and the methods built on them."""

from setuptools import find_packages, setup

CORE = [
    "jax>=0.7",
    "numpy>=1.26",
    "chex>=0.1.90",
]
EXPERIMENTS = [
    "flax>=0.10",
    "optax>=0.2.4",
    "orbax-checkpoint>=0.11",
    "etils[epath]>=1.5",  # workdir files, local or gs:// (fdiv.train.paths)
    "ml-collections>=1.0",
    "tqdm>=4.66",
    "matplotlib>=3.8",
    "scikit-learn>=1.4",
    "mnist1d>=0.0.2",
    "tokenizers>=0.15",  # the byte-level BPE of fdiv.data.text (trained locally, never fetched)
]
TFDS = ["tensorflow-datasets>=4.9"]
TENSORBOARD = ["tensorboardX>=2.6"]  # TensorBoard event files beside metrics.jsonl
NOTEBOOKS = ["matplotlib>=3.8", "nbclient>=0.10", "nbformat>=5.10", "ipykernel>=6.29"]
TEST = [
    *EXPERIMENTS,
    *TFDS,
    *TENSORBOARD,
    "pytest>=8",
    "pytest-xdist>=3.5",
    "hypothesis>=6.100",
    "scipy>=1.12",
    "mpmath>=1.3",
    "ruff>=0.6",
    *NOTEBOOKS,
]

setup(
    name="fdiv",
    version="0.1.0",
    description="f-divergences in JAX: generators, stable divergences on logits, estimators, methods.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["fdiv", "fdiv.*"]),
    install_requires=CORE,
    extras_require={
        "experiments": EXPERIMENTS,
        "tfds": TFDS,
        "tensorboard": TENSORBOARD,
        "notebooks": NOTEBOOKS,
        "test": TEST,
        "all": sorted(set(EXPERIMENTS + TFDS + TENSORBOARD + NOTEBOOKS + TEST)),
    },
)
