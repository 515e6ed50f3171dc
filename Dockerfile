# tdm-alerts service image. Build: docker build -t tdm-alerts .
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY consumer ./consumer
COPY interpretation ./interpretation
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
RUN useradd --system --uid 10001 tdm
COPY --from=build /install /usr/local
USER tdm
ENV TDM_LOG_FORMAT=json
EXPOSE 9108
# SIGTERM finishes the batch in hand, commits and exits 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["tdm-alerts"]
CMD ["run"]
