# syntax=docker/dockerfile:1
# The ci-autoscaler service: one image for the three processes.
#   web (the default command): ci-autoscaler web (gunicorn with service/gunicorn.conf.py)
#   worker:                    ci-autoscaler worker
#   reconcile:                 ci-autoscaler reconcile
# Build and run:
#   docker build -t REGISTRY/ci-autoscaler:0.1.0 .
#   docker run -p 8080:8080 --env-file ENV -e PROMETHEUS_MULTIPROC_DIR=/tmp/metrics \
#     --tmpfs /tmp REGISTRY/ci-autoscaler:0.1.0
#   docker run --env-file ENV REGISTRY/ci-autoscaler:0.1.0 ci-autoscaler worker
# The Helm chart (helm/ci-autoscaler) runs it with a read-only root filesystem, and gives the
# web process PROMETHEUS_MULTIPROC_DIR on an emptyDir; without one, the web makes one in /tmp
# (service.startup.ensure_metrics_dir).

# ---- build: a virtualenv with the dependencies, the source in /app ----
FROM python:3.11.14-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY service/ service/
COPY workers/ workers/
# An editable install: the `ci-autoscaler` command and the imports both use /app, which is also
# the working directory gunicorn imports service.wsgi from. One copy of the code.
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --editable . \
    && /opt/venv/bin/python -m compileall -q service workers

# ---- runtime: the same base, no build tools, a user that is not root ----
FROM python:3.11.14-slim-bookworm
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN groupadd --system --gid 10001 ci-autoscaler \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin ci-autoscaler
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
WORKDIR /app
USER 10001:10001
EXPOSE 8080
# `ci-autoscaler web` checks the environment before gunicorn reads it: gunicorn's own command
# ended in its ValueError traceback on WEB_CONCURRENCY=two. The Procfile and the chart run it too.
CMD ["ci-autoscaler", "web"]
