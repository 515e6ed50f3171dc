# tdm-alerts service image. Build: docker build -t tdm-alerts .
FROM python:3.11-slim AS build
WORKDIR /src
# Locked, hash-checked dependencies first (a layer that changes only with the lock), then the
# wheel of this project without resolving anything again.
COPY requirements.lock ./
RUN pip install --no-cache-dir --prefix=/install --require-hashes -r requirements.lock
COPY pyproject.toml README.md ./
COPY consumer ./consumer
COPY interpretation ./interpretation
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
 && pip install --no-cache-dir --prefix=/install --no-deps /wheels/*.whl

FROM python:3.11-slim
RUN useradd --system --uid 10001 tdm && install -d -o 10001 -g 10001 /var/lib/tdm-alerts
COPY --from=build /install /usr/local
USER 10001
ENV TDM_LOG_FORMAT=json TDM_STATE_DIR=/var/lib/tdm-alerts/state
EXPOSE 9108
# Where no orchestrator probes /healthz (plain Docker, compose): the same liveness check.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('TDM_METRICS_PORT', '9108'), timeout=4)"]
# SIGTERM finishes the batch in hand, commits and exits 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["tdm-alerts"]
CMD ["run"]
