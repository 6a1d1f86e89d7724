# The image the rendered Argo workflows run: the gridded CLI and its GDAL (from rasterio's wheel).
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    NUMBA_CACHE_DIR=/tmp/numba-cache
WORKDIR /opt/gridded
COPY pyproject.toml README.md ./
COPY src ./src
COPY grids ./grids
COPY pipelines ./pipelines
RUN pip install . && gridded --help >/dev/null
RUN useradd --create-home --uid 1000 gridded
USER 1000
ENTRYPOINT ["gridded"]
