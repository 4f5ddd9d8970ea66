from setuptools import setup

setup(
    name="llada-triton",
    version="0.1.0",
    description="Fast, exact block decoding of LLaDA masked-diffusion LMs on Triton kernels",
    packages=["llada_triton", "llada_triton.kernels", "llada_triton.models", "llada_triton.decode", "llada_triton.eval"],
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.4",
        "triton>=3.6",
        "safetensors>=0.4",
        "transformers>=4.38",
        "numpy",
    ],
    extras_require={
        "dev": ["pytest>=8", "psutil", "matplotlib", "nbclient", "nbformat", "nbmake", "ipykernel", "lm-eval>=0.4.13"],
        "eval": ["lm-eval>=0.4.13"],
        "notebooks": ["jupyter", "matplotlib", "ipykernel"],
    },
)
