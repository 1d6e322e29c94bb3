# The feed service image. Build: docker build -t shopfeed .
# Run it behind a buffering proxy, as compose.yaml does (nginx, deploy/nginx/): its gunicorn
# workers read requests with one thread each, so a client sending a byte a second, reaching this
# container directly, would hold one (docs/security.md). Don't publish its port to clients.
FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
# all interfaces of the container (the proxy is another container); gunicorn.conf.py: loopback
ENV GUNICORN_BIND=0.0.0.0:8000
RUN apt-get update && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY feed ./feed
COPY service ./service
COPY gunicorn.conf.py ./
RUN pip install . && useradd --create-home feed
USER feed
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=2s CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz').status != 200)"
CMD ["gunicorn", "-c", "gunicorn.conf.py", "service:create_app()"]
