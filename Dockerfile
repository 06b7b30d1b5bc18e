# The components image: one image that runs every step of both pipelines (KFP's convention
# of a few shared base images). `make image` builds it with podman (or Docker) and prints
# its reference on the last line.
#
# Wheels come from a second build context named `wheels` (`make image` fills .wheels/ from the
# pip cache that the venv setup filled and passes --build-context wheels=.wheels), so the
# build needs no package index and no network. BASE is a public
# Python 3.11 image by default; where no registry is reachable, `make image` makes one from
# Debian with debootstrap and passes it here.
ARG BASE=docker.io/library/python:3.11-slim

# ---------------------------------------------------------------- builder: modelchain's wheel
FROM ${BASE} AS builder
COPY --from=wheels . /wheels
RUN python3 -m venv /build-env \
 && /build-env/bin/pip install --no-index --find-links /wheels --quiet setuptools==84.2.1 wheel==0.48.0
COPY . /src
RUN /build-env/bin/pip wheel --no-deps --no-build-isolation --no-index --wheel-dir /dist --quiet /src \
 && cp /src/constraints.txt /dist/

# ---------------------------------------------------------------- runtime
FROM ${BASE}
ARG EXTRAS=train,eval,registry,data,rag,cluster
ENV VIRTUAL_ENV=/opt/modelchain \
    PATH=/opt/modelchain/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    MLFLOW_DISABLE_TELEMETRY=true \
    RAGAS_DO_NOT_TRACK=true \
    DO_NOT_TRACK=1 \
    TOKENIZERS_PARALLELISM=false
# The wheels are mounted from the builder for the install only: they add nothing to the layers.
RUN --mount=type=bind,from=builder,source=/dist,target=/dist \
    --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    python3 -m venv /opt/modelchain \
 && pip="/opt/modelchain/bin/pip install --no-index --find-links /wheels --quiet --no-cache-dir -c /dist/constraints.txt" \
 && $pip torch==2.13.0 \
 && $pip "$(ls /dist/modelchain-*.whl)[${EXTRAS}]" \
 && /opt/modelchain/bin/pip check \
 && useradd --create-home --uid 1000 modelchain
USER modelchain
WORKDIR /home/modelchain
ENV MODELCHAIN_HOME=/home/modelchain/.modelchain
CMD ["modelchain", "--help"]
