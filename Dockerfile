# Freshwire's Python processes in one image; docker-compose.yml picks the command:
#   python -m cdc
#   python -m gateway --host 0.0.0.0 --port 8080
#   python -m connectors.register --connect http://connect:8083 --pg-host postgres --pg-port 5432
#   python -m clients.sink
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first so that editing the code does not reinstall them: pyproject.toml and the pins.
COPY pyproject.toml constraints.txt ./
COPY contract ./contract
COPY cdc ./cdc
COPY gateway ./gateway
COPY connectors ./connectors
COPY demo ./demo
COPY clients ./clients
RUN pip install -c constraints.txt .

# Run the sources under /app (the same files the native stack runs), with the install providing the
# dependencies; demo/rules.toml is read from here (FRESHWIRE_RULES), and the gateway serves
# clients/js/freshwire.js at /client.js.
ENV PYTHONPATH=/app

RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin freshwire
USER 10001

# 8080: gateway (WebSocket + HTTP); 59108: cdc /metrics, /healthz, /readyz.
EXPOSE 8080 59108
CMD ["python", "-m", "gateway", "--host", "0.0.0.0", "--port", "8080"]
