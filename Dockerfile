# Two images from one file (compose.yaml builds both):
#   docker build --target service -t shopfeed .    the HTTP service (the default, last stage):
#       the service extra only (pyproject.toml), no implicit, scikit-learn, pandas or compiler
#   docker build --target trainer -t shopfeed-trainer .    the `feed` command: train, publish...
# Run the service behind a buffering proxy, as compose.yaml does (nginx, deploy/nginx/): its
# gunicorn workers read requests with one thread each, so a client sending a byte a second,
# reaching this container directly, would hold one (docs/security.md). Don't publish its port.
FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY feed ./feed
COPY service ./service
COPY tools ./tools
RUN useradd --create-home feed

# The trainer: the whole package and its training stack (a compiler in case a wheel is missing,
# removed again in the same layer).
FROM base AS trainer
RUN apt-get update && apt-get install -y --no-install-recommends build-essential \
    && pip install . \
    && apt-get purge -y build-essential && apt-get autoremove -y \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir /artifacts /data && chown feed /artifacts
USER feed
CMD ["feed", "--help"]

# The service: the packages of the `service` extra, then the package without its dependencies.
FROM base AS service
# all interfaces of the container (the proxy is another container); gunicorn.conf.py: loopback
ENV GUNICORN_BIND=0.0.0.0:8000
COPY gunicorn.conf.py ./
RUN python -c "import tomllib; extras = tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']; print('\n'.join(extras['service']))" > /tmp/service.txt \
    && pip install -r /tmp/service.txt && pip install --no-deps . && rm /tmp/service.txt
USER feed
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=2s CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz').status != 200)"
CMD ["gunicorn", "-c", "gunicorn.conf.py", "service:create_app()"]
