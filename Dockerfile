# syntax=docker/dockerfile:1
# The healthiot image. Every process of compose.yaml is this image with another command:
# bridge, api, db migrate, broker-config. Settings come from HEALTHIOT_* variables and
# /run/secrets files; nothing secret is baked in (.dockerignore admits only the sources).

FROM python:3.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY . .
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install .

FROM python:3.11-slim-bookworm
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN groupadd --system --gid 10001 healthiot \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin healthiot
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
# Numeric, so that a runtime can check it is not root without reading /etc/passwd.
USER 10001:10001
ENTRYPOINT ["healthiot"]
CMD ["--help"]
