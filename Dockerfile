# kdsearch worker and dashboard image (CPU PyTorch; for a GPU start from a CUDA PyTorch image).
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app

# CPU wheels of torch first, so that installing kdsearch does not pull the CUDA ones.
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch>=2.4" "torchvision>=0.19"
COPY pyproject.toml README.md ./
COPY kdsearch ./kdsearch
COPY studies ./studies
RUN pip install .

# Run as an unprivileged user; the volumes are created owned by it.
RUN useradd --create-home kd && mkdir -p /data /cache /artifacts && chown kd /data /cache /artifacts
USER kd
CMD ["kdsearch", "studies"]
