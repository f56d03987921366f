from setuptools import find_packages, setup

# What EAT's own source (the user's checkout) imports, beyond the core requirements; its stage-2
# data set (frames_dataset_transformer25.py) adds scikit-learn and python_speech_features.
EAT_DEPS = ["munch", "scikit-image", "scipy", "opencv-python-headless", "soundfile", "pandas", "scikit-learn",
            "python_speech_features"]

setup(
    name="stccl-diffusers",
    version="0.1.0",
    description="STCCL (spatial-temporal coherent correlation learning) as a drop-in training signal "
    "for emotional talking-head generators, diffusers-style.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["stccl_diffusers", "stccl_diffusers.*"]),
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.1",
        "diffusers>=0.29.0",
        "accelerate>=0.28.0",
        "transformers>=4.43.2",
        "peft>=0.11",
        "safetensors>=0.4",
        # OpenCV 5 drops cv2.data cascades and CascadeClassifier (facts §8).
        "opencv-python-headless>=4.8,<5",
        "librosa>=0.10",
        "numpy",
        "pyyaml",
        "tqdm",
        "matplotlib",
        "scipy",
        "imageio",
        "imageio-ffmpeg",
        "tensorboard",
        "threadpoolctl",
    ],
    extras_require={
        # insightface itself pulls in opencv-python 5, which shadows the headless 4.x build and
        # drops the Haar cascades: install it with `pip install --no-deps insightface`.
        "face": ["onnxruntime", "onnx"],
        # 68-point landmarks (data.face_align backend="dlib"); the models ship in the wheel.
        "landmarks": ["dlib-bin", "face_recognition_models"],
        "eat": EAT_DEPS,
        "xformers": ["xformers"],
        # DICE-Talk's own modules import einops (its requirements.txt); the dice_talk backend needs it.
        "dice": ["einops"],
        # The EAT tests run EAT's real source (../shared/third_party), which imports the `eat` extra:
        # README's `pip install -e ".[test]"` must be enough for `pytest tests`.
        "test": ["pytest>=7", "einops", *EAT_DEPS],
        # The documentation site (mkdocs.yml): `mkdocs build --strict`, run by .ci/run.
        "docs": ["mkdocs>=1.6", "mkdocs-material>=9.5", "mkdocstrings[python]>=0.26"],
    },
    entry_points={
        "console_scripts": [
            "stccl-synth=stccl_diffusers.console:synth",
            "stccl-pair=stccl_diffusers.console:pair",
            "stccl-pretrain=stccl_diffusers.console:pretrain",
            "stccl-analyze=stccl_diffusers.console:analyze",
            "stccl-eval=stccl_diffusers.console:evaluate",
            "stccl-merge-lora=stccl_diffusers.console:merge_lora",
        ],
    },
)
