# Image for the server-side jobs (collector now; processor and live view later).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY contract contract
COPY gateway gateway
COPY collector collector
COPY processing processing
COPY store store
COPY simulators simulators
COPY jcm jcm
COPY config config
RUN pip install --no-cache-dir . \
    && groupadd --system --gid 10001 jcm \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin jcm
# the code and config stay root-owned and read-only to the service
USER 10001:10001
ENTRYPOINT ["jcm"]
