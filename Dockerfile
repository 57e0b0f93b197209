# syntax=docker/dockerfile:1
# authkms: gRPC on 9000, monitoring HTTP (/metrics, /healthz, /readyz) on 8000.
#   docker build -t authkms .
#   docker run --rm -p 9000:9000 -p 8000:8000 -e DATABASE_URL=... -e REDIS_URL=... -e APP__KMS__SEED=... authkms
# Without DATABASE_URL/REDIS_URL the embedded PostgreSQL/Redis start under /app/.data (development only).

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
# Dependencies first, so a code change does not reinstall them.
COPY pyproject.toml README.md ./
COPY api ./api
COPY internal ./internal
# Installing the project resolves exactly its dependency set; the project itself is then removed,
# because it runs from /app next to migrations/ and cmd/, which it finds relative to its own files.
RUN /opt/venv/bin/pip install . && /opt/venv/bin/pip uninstall -y authkms

FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN groupadd --system --gid 10001 authkms \
    && useradd --system --uid 10001 --gid authkms --home-dir /app --no-create-home --shell /usr/sbin/nologin authkms
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY api ./api
COPY internal ./internal
COPY cmd ./cmd
COPY configs ./configs
COPY migrations ./migrations
# The only writable place: embedded servers, the development JWT key and the file key storage live here.
RUN mkdir -p /app/.data && chown authkms:authkms /app/.data
USER authkms
EXPOSE 9000 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=3)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["python", "cmd/server/main.py", "-conf", "/app/configs"]
CMD ["serve"]
