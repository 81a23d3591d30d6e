# banditd container: slim Python, non-root, Numba kernels compiled at build time.
FROM python:3.11-slim

# NUMBA_CPU_NAME=generic: the kernels in the image's cache are compiled for any x86-64 CPU, so
# the cache serves on a host of another CPU model (host-specific code would be recompiled
# there at start). Plaintext on 0.0.0.0 is refused at start: give TLS files
# (BANDITD_TLS_CERT_FILE, BANDITD_TLS_KEY_FILE) or BANDITD_ALLOW_INSECURE=true.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NUMBA_CACHE_DIR=/opt/banditd/numba-cache \
    NUMBA_CPU_NAME=generic \
    BANDITD_HOST=0.0.0.0 \
    BANDITD_PORT=50051 \
    BANDITD_METRICS_PORT=9090 \
    BANDITD_DATA_DIR=/data

RUN groupadd --system --gid 10001 banditd \
    && useradd --system --uid 10001 --gid banditd --home-dir /data --no-create-home banditd \
    && mkdir -p /data /opt/banditd/numba-cache \
    && chown banditd:banditd /data /opt/banditd/numba-cache

WORKDIR /tmp/src
COPY pyproject.toml README.md constraints.txt ./
COPY proto ./proto
COPY server ./server
COPY kernels ./kernels
COPY clients ./clients
# Dependencies come from pyproject.toml at the versions of constraints.txt (as `make run`
# installs them); the source tree is removed after install.
RUN pip install --no-cache-dir -c constraints.txt . \
    && rm -rf /tmp/src

WORKDIR /data
USER 10001:10001
# Compile every kernel into the on-disk Numba cache now, so a container start
# only loads it (health turns SERVING in about a second).
RUN banditd warmup

VOLUME ["/data"]
# gRPC, Prometheus /metrics
EXPOSE 50051 9090
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["banditd", "check-health"]
ENTRYPOINT ["banditd"]
CMD ["serve"]
