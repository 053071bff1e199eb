"""mvar-dist packaging.

The top-level folders ops/, data_pipeline/ and configs/ are installed *inside* the package as
`mvar_dist.ops`, `mvar_dist.data_pipeline` and `mvar_dist.configs`, so no generic top-level module
name (such as `ops`) ever lands in site-packages. `pip install -e .` and `pip install .` import the
same way.
"""
from setuptools import find_packages, setup

MAPPED = {"mvar_dist.ops": "ops", "mvar_dist.data_pipeline": "data_pipeline", "mvar_dist.configs": "configs"}


def mapped_packages():
    pkgs = []
    for name, folder in MAPPED.items():
        pkgs.append(name)
        pkgs += [f"{name}.{sub}" for sub in find_packages(folder)]
    return pkgs


# Lower bounds are the oldest versions this project supports; constraints.txt pins the exact set CI was
# green with (see docs/development.md).
extras = {
    "data": ["ray[data,default]>=2.60.0", "pyarrow>=26.0.1", "s3fs>=2026.9.0", "aiobotocore>=3.10.0"],
    "train": ["deepspeed>=0.19.8", "tensorboard>=2.21.0"],
    "eval": ["scipy>=1.17.1", "matplotlib>=3.11.2", "tensorboard>=2.21.0", "s3fs>=2026.9.0",
             "threadpoolctl>=3.5"],
    # Optional GPU accelerations; never required (the CPU build uses our own reference ops).
    "gpu": ["triton>=3.6.0", "mamba-ssm>=2.2.4", "causal-conv1d>=1.5.0", "flash-attn>=2.7.0"],
    "dev": ["pytest>=9.0.3", "pytest-timeout>=2.3.1", "moto[server]>=5.2.5", "boto3>=1.43.0",
            "triton>=3.6.0"],  # triton only to run our kernels' math under TRITON_INTERPRET=1 on CPU
    # Reference packages of two parity tests (our LPIPS vs `lpips`, our FID Inception vs `pytorch-fid`) and
    # the source of LPIPS's default lin weights. Both need torchvision, whose PyPI wheel is a CUDA build
    # that does not import beside a CPU torch: install this extra only where torchvision matches torch
    # (a CUDA torch, or the CPU index's torchvision beside its CPU torch). The tests skip without it.
    "parity": ["lpips>=0.1.4", "pytorch-fid>=0.3.0"],
}

setup(
    name="mvar-dist",
    version="0.1.0",
    description="Distributed pretraining of multi-scale visual autoregressive image models (M-VAR, VAR)",
    python_requires=">=3.10",
    packages=find_packages(include=["mvar_dist", "mvar_dist.*"]) + mapped_packages(),
    package_dir={**MAPPED, "": "."},
    package_data={"mvar_dist.configs": ["*.yaml", "*.json", "*/*.yaml", "*/*.json"]},
    install_requires=["torch>=2.11.0", "numpy>=2.0", "pyyaml>=6.0", "safetensors>=0.4", "pillow>=10.0",
                      "tqdm>=4.66", "psutil>=5.9"],
    extras_require=extras,
    entry_points={"console_scripts": ["mvar-dist=mvar_dist.__main__:main"]},
)
