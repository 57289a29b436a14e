# evp-ingest. Build from the repository root:
#   docker build -f infrastructure/ingest.Dockerfile -t evp-ingest .
# Dependencies are compiled in their own layer (cargo-chef), so code changes rebuild only evp.
FROM rust:1-slim-bookworm AS chef
RUN cargo install cargo-chef --locked --version 0.1.78
WORKDIR /build

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /build/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json --bin evp-ingest
COPY . .
RUN cargo build --release --locked --bin evp-ingest

FROM debian:bookworm-slim AS runtime
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home evp
COPY --from=builder /build/target/release/evp-ingest /usr/local/bin/evp-ingest
USER 10001
ENV PORT=3000
EXPOSE 3000
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD curl -fsS "http://127.0.0.1:${PORT}/health/live" > /dev/null || exit 1
ENTRYPOINT ["/usr/local/bin/evp-ingest"]
