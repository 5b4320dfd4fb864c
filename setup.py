"""Install with `pip install -e . -c requirements/constraints.txt` (the launch scripts do this).

Versions are pinned in one place only: requirements/constraints.txt. The ranges below say what the
code needs; the constraints file says what we test with.
"""
from setuptools import find_packages, setup

OPENCLIPART = ["cairosvg>=2.7"]  # SVG rendering (uses the system cairo library, libcairo2)

setup(
    name="fastslow_jax",
    version="0.1.0",
    description="Fast and Slow text-to-visual retrieval (Miech et al., CVPR 2021) in JAX / Flax NNX",
    python_requires=">=3.11",
    packages=find_packages(include=["fastslow_jax", "fastslow_jax.*"]),
    package_data={"fastslow_jax": ["data/vocab/*.txt"]},
    install_requires=[
        "jax>=0.10",
        "flax>=0.12",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12",
        "ml_collections>=1.1",
        "tensorflow-datasets>=4.9.10",
        "array_record>=0.8",
        "grain>=0.2.18",
        "transformers>=5",
        "tokenizers>=0.23",
        "safetensors>=0.8",
        "scann>=1.4",
        "numpy>=2",
        "pillow>=11",
        "tqdm>=4.66",
        "tensorboardX>=2.6",
        # serving: the ASGI app, its server (httptools: uvicorn's fast HTTP parser), the OpenAPI docstrings
        "starlette>=0.40",
        "uvicorn>=0.30",
        "httptools>=0.6",
        "pyyaml>=6",
    ],
    extras_require={
        "test": ["pytest>=9", "pytest-timeout>=2.3", "selenium>=4.20", "av>=14", *OPENCLIPART],
        "bench": ["faiss-cpu>=1.8", "matplotlib>=3.8"],
        "gpu": ["jax[cuda12]"],  # NVIDIA GPUs (launch/slurm.sh, bench/gpu_check.sh)
        "tpu": ["jax[tpu]"],  # Cloud TPU VMs (launch/tpu_pod.sh)
        "video": ["av>=14"],
        "openclipart": OPENCLIPART,  # Debian's openclipart-svg (fastslow data build openclipart)  # VATEX clips (fastslow data build vatex); pre-extracted frames need nothing
    },
    entry_points={"console_scripts": ["fastslow=fastslow_jax.cli:main"]},
)
