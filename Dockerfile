# The dupwatch image: the default install (the encoder on ONNX Runtime, no PyTorch, no compilers)
# with the model inside, run as a non-root user on a read-only root filesystem, as the Helm chart
# runs it (writable: /tmp and the state volume). docs/operations.md: build, push, install.
#
#   docker build -t dupwatch .                 (or: buildah build -t dupwatch .)
#
# BASE is any Debian-like image with Python 3.11+ and its venv module; an air-gapped build gives
# its own (tests/image/ makes one with mmdebstrap) and installs from a wheelhouse in the build
# context: --build-arg PIP_OPTIONS="--no-index --find-links /src/wheelhouse".
ARG BASE=docker.io/library/python:3.11-slim-bookworm

FROM ${BASE} AS build
ARG PIP_OPTIONS=""
# Extras to add, e.g. EXTRAS=gpu for the chart's gpu.enabled (PyTorch: a ~6 GB image).
ARG EXTRAS=""
COPY . /src
# One virtualenv, copied whole into the runtime stage; pip compiles the bytecode here, since
# nothing may write it at run time.
RUN python3 -m venv /opt/dupwatch \
 && /opt/dupwatch/bin/pip install --no-cache-dir --disable-pip-version-check ${PIP_OPTIONS} \
    "/src${EXTRAS:+[$EXTRAS]}"

FROM ${BASE}
ARG VERSION=0.1.0
ARG SOURCE=""
LABEL org.opencontainers.image.title="dupwatch" \
      org.opencontainers.image.description="Streaming duplicate-image detection for moderation pipelines: Kafka in, verdicts out." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/dupwatch /opt/dupwatch
# The chart's user (podSecurityContext: 10001); no home: nothing is written outside /tmp and
# the state volume.
RUN groupadd --system --gid 10001 dupwatch \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /tmp \
    --shell /usr/sbin/nologin dupwatch
ENV PATH=/opt/dupwatch/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TMPDIR=/tmp \
    HOME=/tmp
USER 10001:10001
WORKDIR /tmp
EXPOSE 6066
ENTRYPOINT ["dupwatch"]
CMD ["worker"]
