# Ruyi in a container. Build and run (README "Running in a container"):
#   docker build --build-arg RUYI_COMMIT=$(git rev-parse --short=12 HEAD) -t ruyi .
#   docker run -d --name ruyi --stop-timeout 15 -p 5100:5100 -p 5200:5200 -p 5001:5001 \
#     -e RUYI_MANAGER_TOKEN=<a long random string> -v ruyi-data:/data ruyi
# The flags below are checked against the binary by tests/packaging.rs; the image itself
# is built by hand (no Docker engine on the CI machine): see README.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# No .git in the build context: the commit comes in as an argument (build.rs).
ARG RUYI_COMMIT=unknown
ENV RUYI_COMMIT=${RUYI_COMMIT}
RUN cargo build --release --locked -p ruyi && strip target/release/ruyi

FROM debian:bookworm-slim
# An unprivileged user owning the data volume, 0700 like the server makes it.
RUN useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin ruyi \
    && install -d -m 0700 -o ruyi -g ruyi /data
COPY --from=build /src/target/release/ruyi /usr/local/bin/ruyi
USER ruyi
VOLUME ["/data"]
# Binary protocol, WebSocket, HTTP API (the API needs RUYI_MANAGER_TOKEN off loopback).
EXPOSE 5100 5200 5001
ENV RUST_LOG=info
# SIGTERM drains over shutdown_drain_secs (5 s), reads acknowledgements for 0.5 s more,
# then gives slow clients up to 5 s to take their output: up to about 12 s, past Docker's
# default 10 s grace, hence --stop-timeout 15 above (a SIGKILL would cut the drain short).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/ruyi", "--data-dir", "/data", "--tcp-addr", "0.0.0.0:5100", "--ws-addr", "0.0.0.0:5200", "--http-addr", "0.0.0.0:5001"]
