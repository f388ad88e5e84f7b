# syntax=docker/dockerfile:1
# A static, non-root image: build with the Rust toolchain, run from distroless with nothing but the binary.
# Base images are pinned by digest, so a rebuild uses exactly the reviewed bytes; refresh both with
# `docker buildx imagetools inspect IMAGE:TAG` and review the change.
FROM rust:1.88-bookworm@sha256:af306cfa71d987911a781c37b59d7d67d934f49684058f96cf72079c3626bfe0 AS build
WORKDIR /src
ARG GIT_REVISION=unknown
ENV GIT_REVISION=${GIT_REVISION}
COPY Cargo.toml Cargo.lock build.rs ./
COPY src ./src
# NB: Cargo.toml declares the benchmark, so cargo wants its source even for a plain build.
COPY benches ./benches
RUN cargo build --release --locked && \
    cp target/release/anthropic-keys-exporter /anthropic-keys-exporter

FROM gcr.io/distroless/cc-debian12:nonroot@sha256:9dac0a79194e45a7da0158a9c6da57b217585af0786db3845d1f0ec1a0dd182f
LABEL org.opencontainers.image.title="anthropic-keys-exporter" \
      org.opencontainers.image.description="Prometheus exporter for the API keys of an Anthropic organization" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /anthropic-keys-exporter /usr/local/bin/anthropic-keys-exporter
USER 65532:65532
EXPOSE 10419
ENTRYPOINT ["/usr/local/bin/anthropic-keys-exporter"]
