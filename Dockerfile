# syntax=docker/dockerfile:1
# The healthiot image. Every process of compose.yaml is this image with another command:
# bridge, api, db migrate, broker-config. Settings come from HEALTHIOT_* variables and
# /run/secrets files; nothing secret is baked in (.dockerignore admits only the sources).
# The target "broker" is Debian's Mosquitto with healthiot's policy plugin, compiled against
# the headers of that very broker (devices/broker_plugin.py says why there is a plugin).

FROM debian:bookworm-slim AS plugin
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev mosquitto-dev libmosquitto-dev \
 && rm -rf /var/lib/apt/lists/*
COPY devices/broker_plugin/healthiot_acl.c /src/
RUN gcc -O2 -Wall -Wextra -Werror -fPIC -shared -o /healthiot_acl.so /src/healthiot_acl.c

FROM debian:bookworm-slim AS broker
# uid 1883 before the package makes its user: the generated files are handed to it.
RUN groupadd --system --gid 1883 mosquitto \
 && useradd --system --uid 1883 --gid 1883 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin mosquitto \
 && apt-get update \
 && apt-get install -y --no-install-recommends mosquitto \
 && rm -rf /var/lib/apt/lists/*
COPY --from=plugin /healthiot_acl.so /usr/lib/healthiot/healthiot_acl.so
# Started as root: the persistence volume is handed to "mosquitto", then Mosquitto loads its
# keys and drops to that user (the default of its `user` option).
ENTRYPOINT ["/bin/sh", "-c", "chown -R mosquitto:mosquitto /mosquitto/config/data && exec /usr/sbin/mosquitto \"$@\"", "mosquitto"]

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
