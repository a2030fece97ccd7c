# llmux: a multi-stage build; the runtime image holds the binary, CA certificates and curl (for
# the health check), and runs as an unprivileged user.
FROM rust:1.88-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p llmux-cli \
 && strip target/release/llmux

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/llmux --create-home llmux
COPY --from=build /src/target/release/llmux /usr/local/bin/llmux
COPY examples/quickstart.yaml /etc/llmux/config.yaml
USER llmux
WORKDIR /var/lib/llmux
EXPOSE 4000
# The readiness route answers 503 while draining, so a stopping container leaves the rotation.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s \
  CMD curl -fsS http://127.0.0.1:4000/health/readiness || exit 1
STOPSIGNAL SIGTERM
ENTRYPOINT ["llmux"]
CMD ["serve", "--host", "0.0.0.0", "--port", "4000", "--config", "/etc/llmux/config.yaml"]
