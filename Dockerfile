# One image for the three services; the command picks the service:
#   python -m tenant_service | python -m config_service | python -m provisioner
# (ENTRYPOINT is `python -m`, so a Deployment's `args: ["config_service"]` is enough).
#
# Build stage: a virtualenv in /opt/venv with the services and the SDK, their
# dependencies pinned by requirements.lock (used as constraints, so only what the
# services need at run time is installed, at the locked versions). Final stage: the
# same slim Python, the virtualenv copied in, no compilers, no pip caches, a fixed
# non-root user (UID/GID 10001, which the Kubernetes securityContext names too).

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/venv
COPY requirements.lock pyproject.toml README.md ./
COPY sdk/ sdk/
COPY servicekit/ servicekit/
COPY tenant_service/ tenant_service/
COPY config_service/ config_service/
COPY provisioner/ provisioner/
RUN /opt/venv/bin/pip install --no-cache-dir -c requirements.lock ./sdk . \
    && /opt/venv/bin/python -m compileall -q /opt/venv/lib \
    && /opt/venv/bin/pip check

FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime
LABEL org.opencontainers.image.title="agentready" \
      org.opencontainers.image.description="agent-ready control plane: TenantService, ConfigService, ProvisionerService" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 agentready \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin agentready
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GRPC_HOST=[::]
WORKDIR /tmp
USER 10001:10001
# gRPC: TenantService 50051, ConfigService 50052, ProvisionerService 50053;
# Prometheus metrics: 9451, 9452, 9453.
EXPOSE 50051 50052 50053 9451 9452 9453
ENTRYPOINT ["python", "-m"]
CMD ["tenant_service"]
