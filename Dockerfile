# The workflow engine image: slim Python, non-root, read-only friendly. Runs /etc/workflow/workflow.yaml
# (the Helm chart mounts its ConfigMap there); routes on 8080, management (health, metrics, API) on 8081.
#   docker build -t workflow-engine .
#   docker run -p 8080:8080 -p 8081:8081 -v $PWD/app.yaml:/etc/workflow/workflow.yaml:ro workflow-engine
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
# Every store and broker driver, so one image serves any config.
RUN python -m venv /opt/workflow \
 && /opt/workflow/bin/pip install ".[postgres,nats,rabbitmq,redis,mqtt]"

FROM python:${PYTHON_VERSION}-slim
LABEL org.opencontainers.image.title="workflow-engine" \
      org.opencontainers.image.description="A configuration-driven workflow engine"
RUN groupadd --system --gid 10001 workflow \
 && useradd --system --uid 10001 --gid workflow --home-dir /var/lib/workflow --shell /usr/sbin/nologin workflow \
 && mkdir -p /etc/workflow /var/lib/workflow \
 && chown workflow:workflow /var/lib/workflow
COPY --from=build /opt/workflow /opt/workflow
ENV PATH=/opt/workflow/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    WORKFLOW_STORE=sqlite:////var/lib/workflow/workflow.db
WORKDIR /var/lib/workflow
USER 10001:10001
EXPOSE 8080 8081
# Liveness: the management server's /healthz answers while the event loop runs (no curl in slim images).
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request as u; sys.exit(0 if u.urlopen('http://127.0.0.1:8081/healthz', timeout=2).status == 200 else 1)"]
ENTRYPOINT ["workflow"]
CMD ["run", "/etc/workflow/workflow.yaml", "--mgmt-addr", "0.0.0.0:8081"]
