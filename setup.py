"""fastlt: fast self-supervised contrastive learning on long-tailed image data."""
from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="fastlt",
    version="0.1.0",
    description="Fast, faithful contrastive self-supervised learning on long-tailed image data",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.11",
    # The recipes and split files ship inside the package (fastlt/pipelines, fastlt/splits), so
    # `fastlt pretrain cifar100_lt/bcl-d` works from an installed wheel; a checkout reads them in place.
    packages=find_packages(include=["fastlt", "fastlt.*"]) + ["fastlt.pipelines", "fastlt.splits"],
    package_dir={"fastlt.pipelines": "pipelines", "fastlt.splits": "splits"},
    package_data={"fastlt.pipelines": ["**/*.toml"], "fastlt.splits": ["**/*"]},
    install_requires=[
        "torch==2.14.1",
        "torchvision==0.29.1",
        "numpy>=1.24",
        "scikit-learn>=1.3",
        "click>=8.1",
        "tqdm>=4.60",
        "matplotlib>=3.7",  # report and training plots
    ],
    extras_require={
        "dali": ["nvidia-dali-cuda130==2.4.0"],
        "bench": ["kornia>=0.8", "nvidia-dali-cuda130==2.4.0"],  # fastlt bench views: the other pipelines
        "ffcv": ["ffcv==1.0.2"],
        # kornia, DALI, tensorboard, wandb and submitit too, so the suite runs fastlt bench's contenders, the
        # loggers and the Slurm path (submitit's local executor) rather than skipping them; mkdocs, so
        # tests/test_docs.py builds the manual in strict mode; pytest-xdist, so make test runs two workers.
        "test": ["pytest>=7", "pytest-xdist>=3.5", "pillow>=9", "scipy>=1.10", "kornia>=0.8",
                 "nvidia-dali-cuda130==2.4.0", "tensorboard>=2.14", "wandb>=0.17", "submitit>=1.5",
                 "mkdocs==1.6.1", "mkdocs-material==9.8.2"],
        "docs": ["mkdocs==1.6.1", "mkdocs-material==9.8.2"],  # make docs: the manual as a site
        "tensorboard": ["tensorboard>=2.14"],  # train.tensorboard: the run's metrics as TensorBoard scalars
        "wandb": ["wandb>=0.17"],  # train.wandb: metrics, config and reports to Weights & Biases (offline by default)
        "slurm": ["submitit>=1.5"],  # fastlt sweep --slurm: each run a Slurm job
    },
    entry_points={"console_scripts": ["fastlt=fastlt.cli:main"]},
)
