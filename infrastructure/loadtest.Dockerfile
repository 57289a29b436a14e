# evp-loadtest, to drive a deployment from inside its network:
#   docker compose -f infrastructure/docker-compose.yml run --rm loadtest --events 100000 --verify
FROM rust:1-slim-bookworm AS chef
RUN cargo install cargo-chef --locked --version 0.1.78
WORKDIR /build

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /build/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json --bin evp-loadtest
COPY . .
RUN cargo build --release --locked --bin evp-loadtest

FROM debian:bookworm-slim AS runtime
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home evp
COPY --from=builder /build/target/release/evp-loadtest /usr/local/bin/evp-loadtest
USER 10001
ENTRYPOINT ["/usr/local/bin/evp-loadtest"]
