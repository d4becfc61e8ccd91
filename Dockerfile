# syntax=docker/dockerfile:1
# Multi-stage build: a static-ish release binary on a slim Debian with time zone data and CA
# certificates, running as a non-root user.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY examples ./examples
RUN cargo build --profile footprint --locked --bin beatd

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates tzdata \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/footprint/beatd /usr/local/bin/beatd
COPY schedules /etc/beatd/schedules
# Build-time check: the image is not built when a shipped schedule file is broken.
RUN beatd check /etc/beatd/schedules
RUN mkdir -p /var/lib/beatd && chown 65532:65532 /var/lib/beatd
USER 65532:65532
WORKDIR /var/lib/beatd
ENV BEATD_SCHEDULES=/etc/beatd/schedules \
    BEATD_HTTP_ADDR=0.0.0.0:9808 \
    BEATD_STATE_FILE=/var/lib/beatd/beatd-state.json
EXPOSE 9808
ENTRYPOINT ["beatd"]
CMD ["run"]
