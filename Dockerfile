# The karabo-async device server image.
#
# Builds FROM python:3.11-slim by default. Where no registry is reachable, `make image` first makes a
# Debian 12 base locally (debootstrap + `podman import`, Python 3.11 from Debian) and passes it as
# BASE; everything below works on either base (see docs/server.md, "Containers").
ARG BASE=python:3.11-slim
FROM ${BASE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    KARABO_DOMAIN=karabo

WORKDIR /opt/karabo

# A site whose HTTPS goes through an inspecting proxy mounts its CA bundle for the build and names
# it here (`make image` does, from the host's PIP_CERT); nothing of it stays in the image.
ARG HOST_CA_BUNDLE=""

# Dependencies first: this layer is rebuilt only when pyproject.toml or the package changes.
COPY pyproject.toml README.md ./
COPY karabo_async ./karabo_async
RUN if [ -n "$HOST_CA_BUNDLE" ]; then export PIP_CERT="$HOST_CA_BUNDLE"; fi \
    && python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check . \
    && rm -rf /root/.cache

# Device classes and init files; compose mounts ./devices over this so plugins can be hot-added.
COPY devices ./devices
COPY docker/healthcheck.py ./healthcheck.py

# Never run as root: a device server needs no privileges.
RUN useradd --system --no-create-home --home-dir /opt/karabo karabo
USER karabo

# Healthy while the server answers a ping through the broker (KARABO_SERVER_ID names it).
HEALTHCHECK --interval=15s --timeout=10s --start-period=20s --retries=3 \
    CMD ["python3", "/opt/karabo/healthcheck.py"]

ENTRYPOINT ["karabo-async"]
CMD ["server", "--plugin-dir", "/opt/karabo/devices"]
