# syntax=docker/dockerfile:1
# A static, non-root image: build with the Rust toolchain, run from distroless with nothing but the binary.
ARG RUST_VERSION=1.88

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
ARG GIT_REVISION=unknown
ENV GIT_REVISION=${GIT_REVISION}
COPY Cargo.toml Cargo.lock build.rs ./
COPY src ./src
# NB: Cargo.toml declares the benchmark, so cargo wants its source even for a plain build.
COPY benches ./benches
RUN cargo build --release --locked && \
    cp target/release/anthropic-keys-exporter /anthropic-keys-exporter

FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="anthropic-keys-exporter" \
      org.opencontainers.image.description="Prometheus exporter for the API keys of an Anthropic organization" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /anthropic-keys-exporter /usr/local/bin/anthropic-keys-exporter
USER 65532:65532
EXPOSE 10419
ENTRYPOINT ["/usr/local/bin/anthropic-keys-exporter"]
