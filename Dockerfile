# syntax=docker/dockerfile:1
# wxlogin: one image for every service; the command picks which one runs:
#   python -m services run <token|qrcode|session|gateway>   one service (what docker-compose.yml runs;
#                                                           the default is the gateway), production mode
#   python -m services run all                              the demo: everything in one process
# Production mode refuses the demo's values (development AppID, http:// WeChat, * origins, the demo
# site name) with one line each; WXLOGIN_DEMO=true turns it off.
# No secret is baked in: appid/secret, WXLOGIN_BUS_KEY, WXLOGIN_DATA_KEY and broker passwords come from
# the environment at run time (.env through compose).
ARG PYTHON_VERSION=3.11

# --- build: a virtualenv with the package and its dependencies ------------------------------------
FROM python:${PYTHON_VERSION}-slim-bookworm AS build
# A PyPI mirror for the install (e.g. where PyPI is slow, as in mainland China): PIP_INDEX_URL in .env,
# passed by compose as a build arg, or `docker build --build-arg PIP_INDEX_URL=…`. Empty: PyPI (pip
# ignores an empty value). Only this build stage sees it; the final image does not keep it.
ARG PIP_INDEX_URL=""
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/wxlogin
WORKDIR /src
# Dependencies first (a layer that survives code changes): install the project from empty packages,
# then drop it and keep only its dependencies.
COPY pyproject.toml README.md ./
RUN mkdir shared services sim \
    && touch shared/__init__.py services/__init__.py sim/__init__.py \
    && /opt/wxlogin/bin/pip install ".[embedded]" \
    && /opt/wxlogin/bin/pip uninstall -y wxlogin
# The offline IP database of the phone's confirm screen (ip2region.xdb, pinned digest) into
# /opt/wxlogin/share/wxlogin, from the same index as the dependencies.
COPY scripts/ip2region_data.py ./scripts/
RUN /opt/wxlogin/bin/python scripts/ip2region_data.py
COPY shared ./shared
COPY services ./services
COPY sim ./sim
RUN /opt/wxlogin/bin/pip install --no-deps . \
    && /opt/wxlogin/bin/python -c "import services.__main__, services.launch, sim.wechat"

# --- runtime: slim, no compiler, no sources, not root ----------------------------------------------
FROM python:${PYTHON_VERSION}-slim-bookworm
LABEL org.opencontainers.image.title="wxlogin" \
      org.opencontainers.image.description="WeChat mini-program-code scan login: token, qrcode, session and gateway services"
RUN groupadd --system --gid 10001 wxlogin \
    && useradd --system --uid 10001 --gid wxlogin --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin wxlogin
COPY --from=build /opt/wxlogin /opt/wxlogin
ENV PATH=/opt/wxlogin/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    WXLOGIN_LOG_FORMAT=json \
    WXLOGIN_GATEWAY_HOST=0.0.0.0 \
    WXLOGIN_OPS_HOST=0.0.0.0
# An empty working directory: Settings looks for .env here and finds none (configuration is env only).
WORKDIR /app
USER 10001:10001
# 8080: the gateway's API; 8081: /healthz, /readyz and /metrics of token, qrcode and session.
EXPOSE 8080 8081
STOPSIGNAL SIGTERM
# For the gateway (and `run all`, whose gateway /readyz covers every service); compose sets one per
# service.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-m", "services", "ready", "gateway"]
# Never the demo by default: a service in production mode (the demo: `python -m services run all`).
CMD ["python", "-m", "services", "run", "gateway"]
