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
        --shell /usr/sbin/nologin healthiot \
 && install -d -m 0700 -o 10001 -g 10001 /var/lib/healthiot/owner-keys \
        /var/lib/healthiot/audit-anchors
# ^ A new named volume takes the owner and mode of the image's directory it is mounted on:
#   without these, the volumes would be root's and the services could not write them.
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
# Numeric, so that a runtime can check it is not root without reading /etc/passwd.
USER 10001:10001
ENTRYPOINT ["healthiot"]
CMD ["--help"]
