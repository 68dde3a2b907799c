# One image for every reelfeed role; the command picks the role:
#
#   docker run --rm reelfeed:local ingest   # Faust ingest worker (exists today)
#   docker run --rm reelfeed:local learn    # Faust learner        (subcommand not written yet)
#   docker run --rm reelfeed:local serve    # /recommend on 8082   (subcommand not written yet)
#   docker run --rm reelfeed:local sim      # simulated site       (subcommand not written yet)
#
# Settings are REELFEED_* environment variables (reelfeed/settings.py); an unknown
# REELFEED_* variable stops the process at start. The code binds to 127.0.0.1 by default,
# so a container that must be reached from outside sets e.g. REELFEED_SERVER_HOST=0.0.0.0
# explicitly (docker-compose.yml does). See docs/deploy.md.
#
# There is no HEALTHCHECK here on purpose: one image serves four roles and only the server
# answers HTTP on a known port, so docker-compose.yml declares the server's health check.

ARG PYTHON_IMAGE=python:3.11-slim

# --- build: resolve and install into a virtualenv, as an unprivileged user ---------------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

# On amd64 every pinned dependency is a wheel. faust-streaming has no wheel for other
# architectures (arm64: Apple silicon); its sdist builds without a compiler too, but
# without its C speedups, so give it one there. (TARGETARCH is set by BuildKit.)
ARG TARGETARCH
RUN if [ "${TARGETARCH}" != "amd64" ]; then \
        apt-get update \
        && apt-get install -y --no-install-recommends gcc libc6-dev \
        && rm -rf /var/lib/apt/lists/*; \
    fi

RUN groupadd --system --gid 10002 build \
    && useradd --system --uid 10002 --gid build --create-home build \
    && mkdir -p /opt/venv /src \
    && chown build:build /opt/venv /src
USER build
WORKDIR /src
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# Dependencies first, in their own layer, so that a code change does not reinstall them.
# The list comes from pyproject.toml; constraints.txt pins every version (make lock).
COPY --chown=build:build pyproject.toml constraints.txt README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && pip install -c constraints.txt -r /tmp/requirements.txt

# Then the code (.dockerignore lets only the packages through) and the package itself.
COPY --chown=build:build . .
RUN pip install -c constraints.txt . \
    && reelfeed --help >/dev/null

# --- runtime: the virtualenv, read-only to the user that runs it -------------------------
FROM ${PYTHON_IMAGE} AS runtime

ARG GIT_SHA=unknown
LABEL org.opencontainers.image.title="reelfeed" \
      org.opencontainers.image.description="Streaming-first movie recommendations (roles: ingest, learn, serve, sim)" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.revision="${GIT_SHA}"

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    REELFEED_VAR_DIR=/var/lib/reelfeed

RUN groupadd --system --gid 10001 reelfeed \
    && useradd --system --uid 10001 --gid reelfeed --home-dir /var/lib/reelfeed \
       --create-home --shell /usr/sbin/nologin reelfeed

# Copied files belong to root: the app can read its code but not change it.
COPY --from=build /opt/venv /opt/venv

USER reelfeed
WORKDIR /var/lib/reelfeed

# server (/recommend, /healthz, /metrics), ingest metrics, learn metrics, simulator API.
EXPOSE 8082 9201 9202 8080

ENTRYPOINT ["reelfeed"]
CMD ["--help"]
