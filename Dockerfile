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
ARG EXTRAS=train,eval,registry,data,rag,cluster
COPY --from=wheels . /wheels
RUN python3 -m venv /build-env \
 && /build-env/bin/pip install --no-index --find-links /wheels --quiet setuptools==84.2.1 wheel==0.48.0
COPY . /src
# modelchain's wheel in /dist/app; its dependencies (for EXTRAS) and the pins in /dist/deps,
# which change only when pyproject.toml's dependencies or the pins do.
RUN /build-env/bin/pip wheel --no-deps --no-build-isolation --no-index --wheel-dir /dist/app --quiet /src \
 && mkdir -p /dist/deps && cp /src/constraints.txt /dist/deps/ \
 && /build-env/bin/python -c "import sys, tomllib; project = tomllib.load(open('/src/pyproject.toml', 'rb'))['project']; \
print('\n'.join(project['dependencies'] + [d for e in sys.argv[1].split(',') for d in project['optional-dependencies'][e]]))" \
    "${EXTRAS}" > /dist/deps/requirements.txt

# ---------------------------------------------------------------- runtime
FROM ${BASE}
ENV VIRTUAL_ENV=/opt/modelchain \
    PATH=/opt/modelchain/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    MLFLOW_DISABLE_TELEMETRY=true \
    RAGAS_DO_NOT_TRACK=true \
    DO_NOT_TRACK=1 \
    TOKENIZERS_PARALLELISM=false
# Two layers: the dependencies, then modelchain itself. A layer cache cannot see into a
# bind mount, so what each RUN installs is COPYed first: a COPY's cache follows the content,
# and a changed source rebuilds only the small second layer. The wheels are mounted for the
# installs only: they add nothing to the layers.
COPY --from=builder /dist/deps /deps
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    python3 -m venv /opt/modelchain \
 && pip="/opt/modelchain/bin/pip install --no-index --find-links /wheels --quiet --no-cache-dir -c /deps/constraints.txt" \
 && $pip torch==2.13.0 \
 && $pip -r /deps/requirements.txt \
 && useradd --create-home --uid 1000 modelchain
COPY --from=builder /dist/app /app
RUN /opt/modelchain/bin/pip install --no-index --no-deps --quiet --no-cache-dir /app/modelchain-*.whl \
 && /opt/modelchain/bin/pip check
USER modelchain
WORKDIR /home/modelchain
ENV MODELCHAIN_HOME=/home/modelchain/.modelchain
CMD ["modelchain", "--help"]
