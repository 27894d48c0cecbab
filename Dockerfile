# Multi-stage: dependencies are built in a throwaway stage; the runtime image holds the
# virtual environment and the code, and runs as an unprivileged user. The versions are the
# runtime lock's (requirements/runtime.txt, hashes checked): no embedded servers, no dev tools.
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/venv
COPY requirements/runtime.txt requirements/runtime.txt
RUN /opt/venv/bin/pip install --require-hashes --no-deps -r requirements/runtime.txt
COPY pyproject.toml README.md ./
COPY domain domain
COPY eventstore eventstore
COPY write_api write_api
COPY projections projections
COPY read_api read_api
COPY service service
COPY grpc_api grpc_api
RUN /opt/venv/bin/pip install --no-deps --no-build-isolation . && /opt/venv/bin/pip check

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/customers --create-home customers
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    CUSTOMERS_DATA_DIR=/var/lib/customers \
    CUSTOMERS_HOST=0.0.0.0
USER customers
EXPOSE 8080 8081 8082 9090
# SIGTERM: uvicorn drains in-flight requests; the background processes stop at a consistent
# position (each commits its work with its position).
STOPSIGNAL SIGTERM
CMD ["customers", "serve", "gateway"]
