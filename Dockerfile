# syntax=docker/dockerfile:1
#
# Baton's image: the `baton` CLI with runtime dependencies only (no dev extras).
# One image for every process; the command picks the part:
#   docker run IMAGE                 -> baton api (the default CMD)
#   docker run IMAGE baton worker    -> a Temporal worker
# docker-compose.yml runs both, against Temporal on PostgreSQL.
#
# Only the files the package needs are copied (no .env, no .baton/ with
# generated keys, no .venv), so the build needs no .dockerignore to stay clean.

# ---- build: wheels for Baton and everything it depends on -------------------
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY models/ models/
COPY workflows/ workflows/
COPY activities/ activities/
COPY runtime/ runtime/
COPY workers/ workers/
COPY api/ api/
RUN pip wheel --wheel-dir /wheels .

# ---- runtime ----------------------------------------------------------------
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    BATON_API_HOST=0.0.0.0 \
    BATON_API_PORT=8000

RUN groupadd --system --gid 10001 baton \
 && useradd --system --uid 10001 --gid baton --home-dir /home/baton \
        --create-home --shell /usr/sbin/nologin baton \
 && install -d -o baton -g baton -m 0700 /home/baton/.baton

# Install from the build stage's wheels only (--no-index: nothing else is
# fetched); the bind mount keeps the wheels out of the final image's layers.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links /wheels baton

USER 10001:10001
WORKDIR /home/baton
EXPOSE 8000
CMD ["baton", "api"]
