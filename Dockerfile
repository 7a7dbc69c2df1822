# kourier-relay container image.
#
# Any Debian-based image with Python 3.11+ and its venv module works as the
# base: the official slim image by default, or one made from Debian packages
# (scripts/make-base-image) with --build-arg BASE_IMAGE=localhost/kourier-base:bookworm.
ARG BASE_IMAGE=python:3.11.14-slim-bookworm

# --- build: resolve and install the relay and its dependencies into a venv ---
FROM ${BASE_IMAGE} AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1

# A venv at a fixed path is self-contained apart from the interpreter, which
# the runtime stage has at the same path because it starts from the same base.
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# .dockerignore lets only the package and its metadata through.
COPY . .
# The project itself, with every dependency pinned by constraints.txt (the
# versions the test suite ran with), so a rebuild gets the same image. The
# base has no compiler, so every dependency must come as a wheel (or be pure
# Python). pip and setuptools only build; the runtime has no use for them.
RUN pip install --constraint constraints.txt "./[postgres]" \
 && kourier-relay --help >/dev/null \
 && python -m pip uninstall --yes --quiet setuptools pip

# --- runtime: the interpreter, the venv, the config; no compilers, no pip cache ---
FROM ${BASE_IMAGE} AS runtime

LABEL org.opencontainers.image.title="kourier-relay" \
      org.opencontainers.image.description="Relays Kourier delivery webhooks to chat, e-mail and SMS through Apprise"

RUN groupadd --system --gid 10001 relay \
 && useradd --system --uid 10001 --gid relay --no-create-home \
        --home-dir /var/lib/kourier-relay --shell /usr/sbin/nologin relay \
 && install -d -o relay -g relay -m 0750 /var/lib/kourier-relay

COPY --from=build /opt/venv /opt/venv
COPY config.example.yaml /etc/kourier-relay/config.yaml

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    KOURIER_RELAY_CONFIG=/etc/kourier-relay/config.yaml \
    KOURIER_RELAY_STORE=sqlite:////var/lib/kourier-relay/relay.db

WORKDIR /var/lib/kourier-relay
VOLUME ["/var/lib/kourier-relay"]
EXPOSE 8080

# Numeric, so Kubernetes' runAsNonRoot can verify it without /etc/passwd.
USER 10001:10001

HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["kourier-relay", "healthcheck"]

ENTRYPOINT ["kourier-relay"]
CMD ["serve"]
