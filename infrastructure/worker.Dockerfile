# evp-worker. Build from the repository root:
#   docker build -f infrastructure/worker.Dockerfile -t evp-worker .
# The same image runs the dead-letter commands: docker run --rm -e REDIS_URL=... evp-worker dlq list
FROM rust:1-slim-bookworm AS chef
RUN cargo install cargo-chef --locked --version 0.1.78
WORKDIR /build

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /build/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json --bin evp-worker
COPY . .
RUN cargo build --release --locked --bin evp-worker

FROM debian:bookworm-slim AS runtime
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home evp
COPY --from=builder /build/target/release/evp-worker /usr/local/bin/evp-worker
USER 10001
ENV WORKER_PORT=9100
EXPOSE 9100
# SIGTERM makes the worker finish, write and acknowledge its batches in flight; give it time.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD curl -fsS "http://127.0.0.1:${WORKER_PORT}/health/live" > /dev/null || exit 1
ENTRYPOINT ["/usr/local/bin/evp-worker"]
