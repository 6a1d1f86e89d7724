# The image the rendered Argo workflows run: the gridded CLI and its GDAL (from rasterio's wheel).
# The base is pinned by digest (python:3.11-slim); to move it on, take the new digest from
# `docker buildx imagetools inspect python:3.11-slim`. Python packages are pinned, with hashes,
# by requirements.lock: `uv pip compile pyproject.toml --python-version 3.11
# --python-platform x86_64-manylinux_2_28 --generate-hashes -o requirements.lock`.
FROM python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NUMBA_CACHE_DIR=/opt/gridded/numba-cache
WORKDIR /opt/gridded

COPY requirements.lock ./
RUN pip install --require-hashes --no-deps -r requirements.lock

COPY pyproject.toml README.md ./
COPY src ./src
COPY grids ./grids
COPY pipelines ./pipelines
RUN pip install --no-deps . \
    && useradd --create-home --uid 1000 gridded

# numba's cache filled at build time for every statistic (a cold pod spent ~6 s compiling them):
# the demo runs the masking, median and count kernels, warm_kernels the others
RUN gridded -q demo --dir /tmp/warm --workers 1 \
    && python -c "from gridded.compute.statistics import STATISTICS, warm_kernels; \
[warm_kernels(name, 4).join() for name in STATISTICS]" \
    && rm -rf /tmp/warm \
    && chown -R 1000:1000 "$NUMBA_CACHE_DIR"

USER 1000
ENTRYPOINT ["gridded"]
